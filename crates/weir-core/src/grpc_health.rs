//! The gRPC health checking protocol (`grpc.health.v1.Health/Check`, what Kubernetes' `grpc`
//! probes and grpc-health-probe ask), for `[pool.health] grpc = true`: the one request and
//! reply message it needs, encoded and decoded by hand (two protobuf fields do not warrant a
//! protobuf crate), in gRPC's length-prefixed framing.

use bytes::{BufMut, Bytes, BytesMut};

pub const PATH: &str = "/grpc.health.v1.Health/Check";

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// A `HealthCheckRequest { service }` in one uncompressed gRPC message frame.
pub fn request(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    frame.freeze()
}

/// Whether a reply body (one gRPC message frame) says SERVING; else why not.
pub fn check_reply(body: &[u8]) -> Result<(), String> {
    let (flag, rest) = body.split_first().ok_or("empty reply")?;
    if *flag != 0 {
        return Err("compressed reply (weir asks for none)".into());
    }
    let (len, message) = rest.split_at_checked(4).ok_or("reply frame cut short")?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let message = message.get(..len).ok_or("reply frame cut short")?;
    match status_field(message)? {
        SERVING => Ok(()),
        0 => Err("status UNKNOWN".into()),
        2 => Err("status NOT_SERVING".into()),
        3 => Err("status SERVICE_UNKNOWN".into()),
        n => Err(format!("status {n}")),
    }
}

/// Field 1 (`status`) of a `HealthCheckResponse`; 0 (its default) when absent.
fn status_field(mut m: &[u8]) -> Result<u64, String> {
    let mut status = 0;
    while !m.is_empty() {
        let key = varint(&mut m)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut m)?,
            (_, 0) => {
                varint(&mut m)?;
            }
            (_, 1) => m = m.get(8..).ok_or("field cut short")?,
            (_, 2) => {
                let n = usize::try_from(varint(&mut m)?).map_err(|_| "field too long")?;
                m = m.get(n..).ok_or("field cut short")?;
            }
            (_, 5) => m = m.get(4..).ok_or("field cut short")?,
            (_, t) => return Err(format!("malformed reply (wire type {t})")),
        }
    }
    Ok(status)
}

fn varint(m: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (b, rest) = m.split_first().ok_or("varint cut short")?;
        *m = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

fn put_varint(out: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_frame_the_service_name() {
        assert_eq!(&request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(&request("ab")[..], &[0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']);
        let long = "s".repeat(200);
        let r = request(&long);
        assert_eq!(&r[..8], &[0, 0, 0, 0, 203, 0x0a, 0xc8, 0x01]);
    }

    #[test]
    fn replies_are_read_for_their_status() {
        assert_eq!(check_reply(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(()));
        assert_eq!(check_reply(&[0, 0, 0, 0, 2, 0x08, 2]), Err("status NOT_SERVING".into()));
        // An empty message is the default status: UNKNOWN.
        assert_eq!(check_reply(&[0, 0, 0, 0, 0]), Err("status UNKNOWN".into()));
        // Unknown fields before it are skipped.
        assert_eq!(check_reply(&[0, 0, 0, 0, 6, 0x12, 2, b'x', b'y', 0x08, 1]), Ok(()));
        for broken in [
            &[][..],
            &[1, 0, 0, 0, 0],
            &[0, 0, 0],
            &[0, 0, 0, 0, 9, 0x08],
            &[0, 0, 0, 0, 2, 0x08, 0x80],
        ] {
            assert!(check_reply(broken).is_err(), "{broken:?}");
        }
    }
}
