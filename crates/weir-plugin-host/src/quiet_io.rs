//! The WASI a plugin gets: clocks, random, an empty environment, and `wasi:io` implemented here,
//! synchronously, with nothing behind it: output is discarded, input is closed, every pollable
//! is ready. No filesystem and no sockets are linked, so a plugin importing them is refused at
//! load.
//!
//! Why not wasmtime-wasi's own sync `wasi:io`: it runs its blocking calls (a panic message on
//! stderr, dropping a stream, `poll`) through `block_on` on the ambient tokio runtime, which
//! panics the gateway's worker thread. Nothing here blocks or needs a runtime.

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::WasiCtxView;
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::bindings::{cli, clocks, random};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};
use wasmtime_wasi::random::WasiRandom;

use crate::host_state::HostState;

/// How many bytes a write may carry (they are all discarded).
const WRITE_BUDGET: u64 = 1 << 20;

/// The resource table, seen by the quiet `wasi:io` implementation.
pub struct Quiet<'a>(&'a mut ResourceTable);

struct QuietData;

impl HasData for QuietData {
    type Data<'a> = Quiet<'a>;
}

struct TableData;

impl HasData for TableData {
    type Data<'a> = &'a mut ResourceTable;
}

fn table(s: &mut HostState) -> &mut ResourceTable {
    let WasiCtxView { table, .. } = wasmtime_wasi::WasiView::ctx(s);
    table
}

pub fn add_to_linker(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::bindings::io::error::add_to_linker::<HostState, TableData>(l, table)?;
    poll::add_to_linker::<HostState, QuietData>(l, |s| Quiet(table(s)))?;
    streams::add_to_linker::<HostState, QuietData>(l, |s| Quiet(table(s)))?;
    clocks::wall_clock::add_to_linker::<HostState, WasiClocks>(l, HostState::clocks)?;
    clocks::monotonic_clock::add_to_linker::<HostState, WasiClocks>(l, HostState::clocks)?;
    random::random::add_to_linker::<HostState, WasiRandom>(l, |s| wasmtime_wasi::WasiView::ctx(s).ctx.random())?;
    random::insecure::add_to_linker::<HostState, WasiRandom>(l, |s| wasmtime_wasi::WasiView::ctx(s).ctx.random())?;
    random::insecure_seed::add_to_linker::<HostState, WasiRandom>(l, |s| wasmtime_wasi::WasiView::ctx(s).ctx.random())?;
    cli::exit::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::environment::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::stdin::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::stdout::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::stderr::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_input::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_output::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_stdin::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_stdout::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_stderr::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    Ok(())
}

impl streams::Host for Quiet<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        match err {
            StreamError::Closed => Ok(streams::StreamError::Closed),
            StreamError::LastOperationFailed(e) => Ok(streams::StreamError::LastOperationFailed(self.0.push(e)?)),
            StreamError::Trap(e) => Err(e),
        }
    }
}

impl streams::HostOutputStream for Quiet<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        self.0.delete(stream)?;
        Ok(())
    }

    fn check_write(&mut self, _stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        Ok(WRITE_BUDGET)
    }

    fn write(&mut self, _stream: Resource<DynOutputStream>, _bytes: Vec<u8>) -> StreamResult<()> {
        Ok(())
    }

    fn blocking_write_and_flush(&mut self, _stream: Resource<DynOutputStream>, _bytes: Vec<u8>) -> StreamResult<()> {
        Ok(())
    }

    fn blocking_write_zeroes_and_flush(&mut self, _stream: Resource<DynOutputStream>, _len: u64) -> StreamResult<()> {
        Ok(())
    }

    fn subscribe(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        wasmtime_wasi::p2::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, _stream: Resource<DynOutputStream>, _len: u64) -> StreamResult<()> {
        Ok(())
    }

    fn flush(&mut self, _stream: Resource<DynOutputStream>) -> StreamResult<()> {
        Ok(())
    }

    fn blocking_flush(&mut self, _stream: Resource<DynOutputStream>) -> StreamResult<()> {
        Ok(())
    }

    fn splice(
        &mut self,
        _dst: Resource<DynOutputStream>,
        _src: Resource<DynInputStream>,
        _len: u64,
    ) -> StreamResult<u64> {
        Err(StreamError::Closed)
    }

    fn blocking_splice(
        &mut self,
        _dst: Resource<DynOutputStream>,
        _src: Resource<DynInputStream>,
        _len: u64,
    ) -> StreamResult<u64> {
        Err(StreamError::Closed)
    }
}

impl streams::HostInputStream for Quiet<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        self.0.delete(stream)?;
        Ok(())
    }

    fn read(&mut self, _stream: Resource<DynInputStream>, _len: u64) -> StreamResult<Vec<u8>> {
        Err(StreamError::Closed)
    }

    fn blocking_read(&mut self, _stream: Resource<DynInputStream>, _len: u64) -> StreamResult<Vec<u8>> {
        Err(StreamError::Closed)
    }

    fn skip(&mut self, _stream: Resource<DynInputStream>, _len: u64) -> StreamResult<u64> {
        Err(StreamError::Closed)
    }

    fn blocking_skip(&mut self, _stream: Resource<DynInputStream>, _len: u64) -> StreamResult<u64> {
        Err(StreamError::Closed)
    }

    fn subscribe(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        wasmtime_wasi::p2::subscribe(self.0, stream)
    }
}

impl poll::Host for Quiet<'_> {
    /// Everything is ready at once: there is nothing to wait for.
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        Ok((0..pollables.len() as u32).collect())
    }
}

impl poll::HostPollable for Quiet<'_> {
    fn ready(&mut self, _pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        Ok(true)
    }

    fn block(&mut self, _pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        Ok(())
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        self.0.delete(pollable)?;
        Ok(())
    }
}
