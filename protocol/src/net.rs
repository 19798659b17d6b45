//! Non-blocking reads and writes of a framed socket's buffers, shared by
//! every peer (the switch's terminal and link actors, the simulator, the
//! load generator). The one piece of I/O in this crate: it is kept here
//! because each of them moves bytes between a `TcpStream` and the
//! `BytesMut` the codec frames, and they should do it the same way.

use bytes::BytesMut;
use tokio::net::TcpStream;

/// Writes as much of `wbuf` as the socket takes now, dropping what went
/// out; `Ok` also when the socket is full.
pub fn write_available(stream: &TcpStream, wbuf: &mut BytesMut) -> std::io::Result<()> {
    use bytes::Buf;
    while !wbuf.is_empty() {
        match stream.try_write(wbuf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => wbuf.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads everything the socket has now; false once the peer has closed.
pub fn read_available(stream: &TcpStream, rbuf: &mut BytesMut) -> std::io::Result<bool> {
    read_up_to(stream, rbuf, usize::MAX)
}

/// Reads what the socket has now, stopping once `budget` bytes are in
/// (the socket then stays readable for the next turn); false once the
/// peer has closed.
pub fn read_up_to(stream: &TcpStream, rbuf: &mut BytesMut, budget: usize) -> std::io::Result<bool> {
    use bytes::BufMut;
    let mut total = 0;
    loop {
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(64 * 1024);
        }
        let spare = rbuf.spare_capacity_mut();
        let room = spare.len();
        let mut got = None;
        // A read that does not fill the buffer has drained the socket:
        // telling tokio so (WouldBlock) clears its readiness now, which
        // saves the second `recv` per wake that reading until WouldBlock
        // costs. Readiness is cleared only for the event already seen, so
        // data arriving meanwhile still wakes us.
        let r = stream.try_io(tokio::io::Interest::READABLE, || {
            let n = socket2::SockRef::from(stream).recv(spare)?;
            got = Some(n);
            if n > 0 && n < room {
                Err(std::io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        match (got, r) {
            (Some(0), _) => return Ok(false),
            (Some(n), _) => {
                // SAFETY: `recv` initialised the first `n` bytes of the
                // spare capacity.
                unsafe { rbuf.advance_mut(n) };
                total += n;
                if n < room || total >= budget {
                    return Ok(true);
                }
            }
            (None, Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
            (None, Err(e)) => return Err(e),
            (None, Ok(_)) => return Ok(true),
        }
    }
}
