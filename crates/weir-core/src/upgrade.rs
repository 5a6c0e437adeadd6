//! Zero-downtime binary upgrade (`weir run --upgrade-from SOCKET`).
//!
//! A running weir started with `--upgrade-socket PATH` listens on that Unix socket. A new weir
//! process connects, receives every listening socket (the listeners and the admin API) as file
//! descriptors (`SCM_RIGHTS`) with a manifest naming them, starts serving on them, and then says
//! `ready`. Only then does the old process stop accepting, finish its in-flight requests and exit.
//! No connect is refused at any point: the accept queue belongs to the socket, and both processes
//! hold the socket during the overlap. If the new process fails before `ready` (bad config, a
//! plugin that does not load, a crash), the old one notices the closed stream and keeps serving.
//!
//! The exchange, on one stream:
//! 1. new -> old: `weir-upgrade/1\n`
//! 2. old -> new: a 4-byte big-endian length and a JSON [`Manifest`], the descriptors attached in
//!    manifest order;
//! 3. new -> old: `ready\n` once it serves.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

const HELLO: &[u8] = b"weir-upgrade/1\n";
const READY: &[u8] = b"ready\n";
/// More sockets than any config has; the manifest says how many came.
const MAX_SOCKETS: usize = 256;
const MAX_MANIFEST: usize = 1 << 20;
/// How long the old process waits for the new one to start serving (it has already compiled
/// its plugins when it connects, so this covers binding and starting tasks).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the old process sends alongside the descriptors.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub pid: u32,
    pub sockets: Vec<SocketEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketEntry {
    /// The listener's name, or `admin`.
    pub name: String,
    pub admin: bool,
    pub addr: SocketAddr,
}

/// A listening socket the old process offers.
pub(crate) struct Offer {
    pub entry: SocketEntry,
    pub socket: Arc<TcpListener>,
}

/// The sockets received from the running process, taken one by one while the new gateway starts.
pub struct Inherited {
    stream: UnixStream,
    pub old_pid: u32,
    sockets: Vec<(SocketEntry, Option<std::net::TcpListener>)>,
}

impl Inherited {
    /// Connects to the running weir at `path` and receives its listening sockets.
    pub fn receive(path: &Path) -> Result<Inherited, String> {
        let fail = |what: &str, e: std::io::Error| format!("upgrade from {}: {what}: {e}", path.display());
        let stream = UnixStream::connect(path).map_err(|e| fail("cannot connect", e))?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| fail("socket options", e))?;
        (&stream)
            .write_all(HELLO)
            .map_err(|e| fail("cannot send the request", e))?;

        let mut data = vec![0u8; 64 * 1024];
        let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &stream,
            &mut [IoSliceMut::new(&mut data)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| fail("cannot receive the sockets", e.into()))?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        let received = got.bytes.min(data.len());
        if received < 4 {
            return Err(format!(
                "upgrade from {}: the running process closed the connection without sending its sockets",
                path.display()
            ));
        }
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len > MAX_MANIFEST {
            return Err(format!(
                "upgrade from {}: manifest of {len} bytes is too large",
                path.display()
            ));
        }
        let mut manifest = data[4..received].to_vec();
        if manifest.len() < len {
            let mut rest = vec![0u8; len - manifest.len()];
            (&stream)
                .read_exact(&mut rest)
                .map_err(|e| fail("truncated manifest", e))?;
            manifest.extend_from_slice(&rest);
        }
        manifest.truncate(len);
        let manifest: Manifest = serde_json::from_slice(&manifest)
            .map_err(|e| format!("upgrade from {}: bad manifest: {e}", path.display()))?;
        if manifest.sockets.len() != fds.len() {
            return Err(format!(
                "upgrade from {}: manifest names {} socket(s) but {} descriptor(s) came",
                path.display(),
                manifest.sockets.len(),
                fds.len()
            ));
        }
        let mut sockets = Vec::with_capacity(fds.len());
        for (entry, fd) in manifest.sockets.into_iter().zip(fds) {
            let listener = std::net::TcpListener::from(fd);
            // The descriptor must be what the manifest says: a TCP socket bound there.
            match listener.local_addr() {
                Ok(addr) if addr == entry.addr => {}
                other => {
                    return Err(format!(
                        "upgrade from {}: socket `{}` is not bound to {} ({other:?})",
                        path.display(),
                        entry.name,
                        entry.addr
                    ));
                }
            }
            listener.set_nonblocking(true).map_err(|e| fail("socket options", e))?;
            sockets.push((entry, Some(listener)));
        }
        Ok(Inherited {
            stream,
            old_pid: manifest.pid,
            sockets,
        })
    }

    /// The inherited socket for listener `name` (or the admin API) that is bound where the new
    /// config binds it: same address, or same name and IP when the config asks for port 0.
    pub(crate) fn take(&mut self, name: &str, admin: bool, bind: SocketAddr) -> Option<std::net::TcpListener> {
        let exact = self
            .sockets
            .iter()
            .position(|(e, s)| s.is_some() && e.admin == admin && e.addr == bind);
        let by_name = || {
            self.sockets.iter().position(|(e, s)| {
                s.is_some() && bind.port() == 0 && e.admin == admin && e.name == name && e.addr.ip() == bind.ip()
            })
        };
        let index = exact.or_else(by_name)?;
        self.sockets[index].1.take()
    }

    /// Tells the old process the new one serves: it stops accepting, drains and exits. Sockets
    /// not taken (listeners the new config dropped) close here, in this process; the old
    /// process closes its copies as it exits.
    pub fn confirm(self) -> Result<(), String> {
        (&self.stream)
            .write_all(READY)
            .map_err(|e| format!("upgrade: cannot tell the old process (pid {}): {e}", self.old_pid))
    }
}

/// The running side: a Unix socket that hands the listening sockets to a new process.
pub(crate) struct UpgradeServer {
    path: PathBuf,
    /// The inode we bound, so we never remove a socket a newer process bound at the same path.
    ino: u64,
    stop: CancellationToken,
}

impl UpgradeServer {
    /// Binds `path` (replacing a stale socket file left there) and serves upgrade requests until
    /// one succeeds (then cancels `handed_over`) or the gateway stops.
    pub fn spawn(
        path: &Path,
        gather: impl Fn() -> Vec<Offer> + Send + Sync + 'static,
        handed_over: CancellationToken,
    ) -> std::io::Result<UpgradeServer> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path)?;
        let ino = std::fs::metadata(path)?.ino();
        let stop = CancellationToken::new();
        let task_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "upgrade socket: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = task_stop.cancelled() => return,
                };
                let offers = gather();
                let outcome = match stream.into_std() {
                    Ok(stream) => tokio::task::spawn_blocking(move || hand_over(stream, offers))
                        .await
                        .unwrap_or_else(|e| Err(format!("upgrade task failed: {e}"))),
                    Err(e) => Err(e.to_string()),
                };
                match outcome {
                    Ok(()) => {
                        tracing::info!("binary upgrade: the new process serves; this one stops accepting");
                        handed_over.cancel();
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "binary upgrade aborted; this process keeps serving"),
                }
            }
        });
        Ok(UpgradeServer {
            path: path.to_path_buf(),
            ino,
            stop,
        })
    }

    /// Stops serving upgrades and removes the socket file if it is still ours.
    pub fn close(&self) {
        self.stop.cancel();
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One upgrade exchange on a blocking stream (runs off the async workers).
fn hand_over(stream: UnixStream, offers: Vec<Offer>) -> Result<(), String> {
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let mut hello = [0u8; HELLO.len()];
    (&stream)
        .read_exact(&mut hello)
        .map_err(|e| format!("no upgrade request: {e}"))?;
    if hello != HELLO {
        return Err("not an upgrade request".to_string());
    }
    let manifest = Manifest {
        pid: std::process::id(),
        sockets: offers.iter().map(|o| o.entry.clone()).collect(),
    };
    let json = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let mut message = Vec::with_capacity(4 + json.len());
    message.extend_from_slice(&u32::try_from(json.len()).map_err(|e| e.to_string())?.to_be_bytes());
    message.extend_from_slice(&json);
    let fds: Vec<_> = offers.iter().map(|o| o.socket.as_fd()).collect();
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err("too many sockets for one message".to_string());
    }
    let sent = rustix::net::sendmsg(&stream, &[IoSlice::new(&message)], &mut control, SendFlags::NOSIGNAL)
        .map_err(|e| format!("cannot send the sockets: {e}"))?;
    (&stream)
        .write_all(&message[sent..])
        .map_err(|e| format!("cannot send the manifest: {e}"))?;
    tracing::info!(
        sockets = offers.len(),
        "binary upgrade: sockets sent, waiting for the new process"
    );

    stream
        .set_read_timeout(Some(READY_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut ready = [0u8; READY.len()];
    (&stream)
        .read_exact(&mut ready)
        .map_err(|e| format!("the new process did not start serving: {e}"))?;
    if ready != READY {
        return Err("the new process answered something other than `ready`".to_string());
    }
    Ok(())
}
