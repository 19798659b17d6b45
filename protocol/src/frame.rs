//! Length-header framing for ISO 8583 over TCP.
//!
//! Each message travels behind a length header. [`FrameCodec`] is a
//! tokio-util `Decoder`/`Encoder`; the declared length is checked against
//! the maximum before any of the body is buffered, so a hostile header
//! can not make us allocate.

use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio_util::codec::{Decoder, Encoder};

/// Default maximum frame body: 8 KiB.
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024;

/// The length header in front of each message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LengthHeader {
    /// 2-byte big-endian binary length of the body (the default).
    #[default]
    Binary2,
    /// 4 ASCII decimal digits giving the body length.
    Ascii4,
    /// 2-byte big-endian length that counts the header itself.
    Binary2Inclusive,
    /// 4-byte big-endian binary length of the body.
    Binary4,
}

impl LengthHeader {
    pub const ALL: [LengthHeader; 4] = [
        LengthHeader::Binary2,
        LengthHeader::Ascii4,
        LengthHeader::Binary2Inclusive,
        LengthHeader::Binary4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LengthHeader::Binary2 => "binary2",
            LengthHeader::Ascii4 => "ascii4",
            LengthHeader::Binary2Inclusive => "binary2-inclusive",
            LengthHeader::Binary4 => "binary4",
        }
    }

    /// Bytes taken by the header.
    pub fn width(self) -> usize {
        match self {
            LengthHeader::Binary2 | LengthHeader::Binary2Inclusive => 2,
            LengthHeader::Ascii4 | LengthHeader::Binary4 => 4,
        }
    }

    /// Largest body the header can describe.
    pub fn limit(self) -> usize {
        match self {
            LengthHeader::Binary2 => u16::MAX as usize,
            LengthHeader::Binary2Inclusive => u16::MAX as usize - 2,
            LengthHeader::Ascii4 => 9999,
            LengthHeader::Binary4 => u32::MAX as usize,
        }
    }

    /// Reads the body length from a complete header.
    pub fn read(self, header: &[u8]) -> Result<usize, FrameError> {
        match self {
            LengthHeader::Binary2 => Ok(u16::from_be_bytes([header[0], header[1]]) as usize),
            LengthHeader::Binary2Inclusive => {
                let total = u16::from_be_bytes([header[0], header[1]]) as usize;
                total.checked_sub(2).ok_or(FrameError::BadHeader(
                    "inclusive length is smaller than the header",
                ))
            }
            LengthHeader::Ascii4 => {
                let mut n = 0usize;
                for &c in &header[..4] {
                    let d = c.wrapping_sub(b'0');
                    if d > 9 {
                        return Err(FrameError::BadHeader(
                            "ASCII length is not 4 decimal digits",
                        ));
                    }
                    n = n * 10 + d as usize;
                }
                Ok(n)
            }
            LengthHeader::Binary4 => {
                Ok(u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize)
            }
        }
    }

    /// Writes the header for a body of `len` bytes into `out[..width]`.
    fn write_into(self, len: usize, out: &mut [u8]) -> Result<(), FrameError> {
        if len > self.limit() {
            return Err(FrameError::TooLong {
                declared: len,
                max: self.limit(),
            });
        }
        match self {
            LengthHeader::Binary2 => out[..2].copy_from_slice(&(len as u16).to_be_bytes()),
            LengthHeader::Binary2Inclusive => {
                out[..2].copy_from_slice(&((len + 2) as u16).to_be_bytes())
            }
            LengthHeader::Ascii4 => {
                out[0] = b'0' + (len / 1000) as u8;
                out[1] = b'0' + (len / 100 % 10) as u8;
                out[2] = b'0' + (len / 10 % 10) as u8;
                out[3] = b'0' + (len % 10) as u8;
            }
            LengthHeader::Binary4 => out[..4].copy_from_slice(&(len as u32).to_be_bytes()),
        }
        Ok(())
    }

    /// Appends a header and `body` to `out`.
    pub fn encode(self, body: &[u8], out: &mut BytesMut) -> Result<(), FrameError> {
        let mut h = [0u8; 4];
        self.write_into(body.len(), &mut h)?;
        out.reserve(self.width() + body.len());
        out.put_slice(&h[..self.width()]);
        out.put_slice(body);
        Ok(())
    }

    /// Reserves room for a header at the end of `out` so the body can be
    /// packed straight after it; returns the header's position for
    /// [`LengthHeader::finish`].
    pub fn begin(self, out: &mut BytesMut) -> usize {
        let at = out.len();
        out.put_bytes(0, self.width());
        at
    }

    /// Fills in the header reserved by [`LengthHeader::begin`] once the
    /// body has been written. On error the partial frame is removed.
    pub fn finish(self, out: &mut BytesMut, at: usize) -> Result<(), FrameError> {
        let body = out.len() - at - self.width();
        let r = self.write_into(body, &mut out[at..at + self.width()]);
        if r.is_err() {
            out.truncate(at);
        }
        r
    }
}

impl FromStr for LengthHeader {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LengthHeader::ALL
            .into_iter()
            .find(|h| h.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown length header `{s}` (known: {})",
                    LengthHeader::ALL.map(|h| h.name()).join(", ")
                )
            })
    }
}

impl fmt::Display for LengthHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(thiserror::Error, Debug)]
pub enum FrameError {
    #[error("frame length {declared} is over the maximum {max}")]
    TooLong { declared: usize, max: usize },
    #[error("bad length header: {0}")]
    BadHeader(&'static str),
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Incomplete { buffered: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into frame bodies and writes frames.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    pub header: LengthHeader,
    pub max_frame: usize,
}

impl FrameCodec {
    pub fn new(header: LengthHeader, max_frame: usize) -> FrameCodec {
        FrameCodec { header, max_frame }
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(LengthHeader::Binary2, DEFAULT_MAX_FRAME)
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let w = self.header.width();
        if src.len() < w {
            return Ok(None);
        }
        let len = self.header.read(&src[..w])?;
        if len > self.max_frame {
            return Err(FrameError::TooLong {
                declared: len,
                max: self.max_frame,
            });
        }
        if src.len() < w + len {
            src.reserve(w + len - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(w + len);
        let _ = frame.split_to(w);
        Ok(Some(frame.freeze()))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(FrameError::Incomplete {
                buffered: buf.len(),
            }),
        }
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, body: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        if body.len() > self.max_frame {
            return Err(FrameError::TooLong {
                declared: body.len(),
                max: self.max_frame,
            });
        }
        self.header.encode(body, dst)
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        Encoder::<&[u8]>::encode(self, &body, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(h: LengthHeader) -> FrameCodec {
        FrameCodec::new(h, 100)
    }

    #[test]
    fn every_header_round_trips() {
        for h in LengthHeader::ALL {
            let mut c = codec(h);
            let mut buf = BytesMut::new();
            c.encode(&b"hello"[..], &mut buf).unwrap();
            c.encode(&b""[..], &mut buf).unwrap();
            assert_eq!(buf.len(), 2 * h.width() + 5, "{h}");
            assert_eq!(c.decode(&mut buf).unwrap().as_deref(), Some(&b"hello"[..]));
            assert_eq!(c.decode(&mut buf).unwrap().as_deref(), Some(&b""[..]));
            assert_eq!(c.decode(&mut buf).unwrap(), None);
        }
    }

    #[test]
    fn header_formats_are_as_specified() {
        let mut out = BytesMut::new();
        LengthHeader::Binary2.encode(b"abc", &mut out).unwrap();
        assert_eq!(&out[..], b"\x00\x03abc");
        out.clear();
        LengthHeader::Ascii4.encode(b"abc", &mut out).unwrap();
        assert_eq!(&out[..], b"0003abc");
        out.clear();
        LengthHeader::Binary2Inclusive
            .encode(b"abc", &mut out)
            .unwrap();
        assert_eq!(&out[..], b"\x00\x05abc");
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut c = codec(LengthHeader::Binary2);
        let mut buf = BytesMut::from(&b"\x00"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"\x04ab");
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"cd\x00");
        assert_eq!(c.decode(&mut buf).unwrap().as_deref(), Some(&b"abcd"[..]));
        assert_eq!(&buf[..], b"\x00");
        assert!(matches!(
            c.decode_eof(&mut buf),
            Err(FrameError::Incomplete { buffered: 1 })
        ));
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header_alone() {
        let mut c = codec(LengthHeader::Binary2);
        let mut buf = BytesMut::from(&b"\xFF\xFF"[..]);
        let cap_before = buf.capacity();
        match c.decode(&mut buf) {
            Err(FrameError::TooLong { declared, max }) => assert_eq!((declared, max), (65535, 100)),
            other => panic!("expected TooLong, got {other:?}"),
        }
        assert_eq!(buf.capacity(), cap_before, "nothing reserved for the body");

        let mut c = codec(LengthHeader::Ascii4);
        let mut buf = BytesMut::from(&b"12x4"[..]);
        assert!(matches!(c.decode(&mut buf), Err(FrameError::BadHeader(_))));

        let mut c = codec(LengthHeader::Binary2Inclusive);
        let mut buf = BytesMut::from(&b"\x00\x01"[..]);
        assert!(matches!(c.decode(&mut buf), Err(FrameError::BadHeader(_))));
    }

    #[test]
    fn begin_and_finish_frame_a_body_in_place() {
        let mut out = BytesMut::new();
        let at = LengthHeader::Ascii4.begin(&mut out);
        out.extend_from_slice(b"0800");
        LengthHeader::Ascii4.finish(&mut out, at).unwrap();
        assert_eq!(&out[..], b"00040800");

        let at = LengthHeader::Ascii4.begin(&mut out);
        out.extend_from_slice(&[b'x'; 10_000]);
        assert!(LengthHeader::Ascii4.finish(&mut out, at).is_err());
        assert_eq!(&out[..], b"00040800", "the failed frame is removed");
    }

    #[test]
    fn names_parse() {
        for h in LengthHeader::ALL {
            assert_eq!(h.name().parse::<LengthHeader>(), Ok(h));
        }
        assert!(
            "binary3"
                .parse::<LengthHeader>()
                .unwrap_err()
                .contains("ascii4")
        );
    }
}
