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

/// A framed peer's connection: plain TCP, or TLS over it. Both are driven
/// the same way, from tokio's readiness of the TCP socket: one `recv` per
/// wake feeds every TLS record it brought through rustls, and a write
/// hands rustls as much plaintext as it buffers, then pushes all records
/// out with one `writev`.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsConn>),
}

/// TLS over a TCP socket. The handshake is done before the connection is
/// handed to a peer's loop ([`TlsConn::handshake`]).
pub struct TlsConn {
    tcp: TcpStream,
    tls: rustls::Connection,
    /// Ciphertext read from the socket, not yet given to rustls.
    cipher: BytesMut,
    /// Plaintext that arrived with the end of the handshake, before the
    /// peer's loop started reading.
    early: BytesMut,
    /// The peer's close_notify came.
    peer_closed: bool,
}

/// Plaintext rustls holds for writing at most, per connection: what a
/// peer that stops reading can make us hold on top of the socket buffer.
pub const TLS_BUFFER_LIMIT: usize = 256 * 1024;

impl Conn {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => &t.tcp,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// The TLS connection, if any (certificates, version, suite).
    pub fn tls(&self) -> Option<&rustls::Connection> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls(t) => Some(&t.tls),
        }
    }

    /// Plaintext is waiting that no readiness event will announce: read
    /// now, without waiting for the socket.
    pub fn has_buffered(&self) -> bool {
        match self {
            Conn::Plain(_) => false,
            Conn::Tls(t) => !t.early.is_empty(),
        }
    }

    /// Reads what the socket has now (up to `budget` bytes off the wire),
    /// appending the plaintext to `rbuf`; false once the peer has closed.
    pub fn read_up_to(&mut self, rbuf: &mut BytesMut, budget: usize) -> std::io::Result<bool> {
        match self {
            Conn::Plain(s) => read_up_to(s, rbuf, budget),
            Conn::Tls(t) => t.read(rbuf, |tcp, buf| read_up_to(tcp, buf, budget)),
        }
    }

    /// As [`Conn::read_up_to`], without a budget.
    pub fn read_available(&mut self, rbuf: &mut BytesMut) -> std::io::Result<bool> {
        self.read_up_to(rbuf, usize::MAX)
    }

    /// Reads past tokio's readiness, with plain `recv`s until the socket
    /// has nothing more now (or `budget`): for data that has arrived but
    /// whose readiness may not have been seen yet.
    pub fn drain(&mut self, rbuf: &mut BytesMut, budget: usize) -> std::io::Result<bool> {
        match self {
            Conn::Plain(s) => drain_socket(s, rbuf, budget),
            Conn::Tls(t) => t.read(rbuf, |tcp, buf| drain_socket(tcp, buf, budget)),
        }
    }

    /// Writes from `buf` what the connection takes now; for TLS the count
    /// is of plaintext accepted (encrypted and queued or sent).
    /// `WouldBlock` when nothing was taken.
    pub fn try_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.try_write(buf),
            Conn::Tls(t) => t.write(buf),
        }
    }

    /// Writes as much of `wbuf` as the connection takes now, dropping
    /// what went out; `Ok` also when the socket is full.
    pub fn write_available(&mut self, wbuf: &mut BytesMut) -> std::io::Result<()> {
        use bytes::Buf;
        while !wbuf.is_empty() {
            match self.try_write(wbuf) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => wbuf.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        self.flush()
    }

    /// TLS records are queued that the socket did not take yet: wait
    /// until it is writable and [`Conn::flush`].
    pub fn wants_flush(&self) -> bool {
        match self {
            Conn::Plain(_) => false,
            Conn::Tls(t) => t.tls.wants_write(),
        }
    }

    /// Sends queued TLS records; `Ok` also when the socket is full.
    pub fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(_) => Ok(()),
            Conn::Tls(t) => t.flush(),
        }
    }

    /// Says goodbye (TLS close_notify, best effort) and shuts the socket
    /// both ways.
    pub fn shutdown(&mut self) {
        if let Conn::Tls(t) = self {
            t.tls.send_close_notify();
            let _ = t.flush();
        }
        let _ = socket2::SockRef::from(self.tcp()).shutdown(std::net::Shutdown::Both);
    }
}

/// Reads until the socket has nothing more now (or `budget`), with plain
/// non-blocking `recv`s; false once the peer has closed.
fn drain_socket(stream: &TcpStream, rbuf: &mut BytesMut, budget: usize) -> std::io::Result<bool> {
    use bytes::BufMut;
    let sock = socket2::SockRef::from(stream);
    let mut total = 0;
    while total < budget {
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(64 * 1024);
        }
        match sock.recv(rbuf.spare_capacity_mut()) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                // SAFETY: `recv` initialised the first `n` bytes of the
                // spare capacity.
                unsafe { rbuf.advance_mut(n) };
                total += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// `io::Write` over a tokio socket's non-blocking writes, for rustls.
struct SocketWriter<'a>(&'a TcpStream);

impl std::io::Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn tls_error(e: rustls::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

impl TlsConn {
    /// The server side of a TLS connection just accepted.
    pub fn server(
        tcp: TcpStream,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> std::io::Result<TlsConn> {
        let tls = rustls::ServerConnection::new(config).map_err(tls_error)?;
        Ok(TlsConn::new(tcp, tls.into()))
    }

    /// The client side, checking the server's certificate against `name`.
    pub fn client(
        tcp: TcpStream,
        config: std::sync::Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> std::io::Result<TlsConn> {
        let tls = rustls::ClientConnection::new(config, name).map_err(tls_error)?;
        Ok(TlsConn::new(tcp, tls.into()))
    }

    fn new(tcp: TcpStream, mut tls: rustls::Connection) -> TlsConn {
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        TlsConn {
            tcp,
            tls,
            cipher: BytesMut::new(),
            early: BytesMut::new(),
            peer_closed: false,
        }
    }

    /// Runs the handshake to its end. The error of a refused handshake
    /// carries the rustls error ([`crate::tls::failure_reason`]).
    pub async fn handshake(mut self) -> std::io::Result<Conn> {
        while self.tls.is_handshaking() || self.tls.wants_write() {
            if self.tls.wants_write() {
                self.tcp.writable().await?;
                self.flush()?;
                continue;
            }
            self.tcp.readable().await?;
            let mut early = std::mem::take(&mut self.early);
            let open = self.read(&mut early, |tcp, buf| read_up_to(tcp, buf, 64 * 1024));
            self.early = early;
            if !open? && self.tls.is_handshaking() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "peer closed during the TLS handshake",
                ));
            }
        }
        Ok(Conn::Tls(Box::new(self)))
    }

    /// Reads ciphertext with `recv`, runs every record through rustls,
    /// and appends the plaintext to `rbuf`.
    fn read(
        &mut self,
        rbuf: &mut BytesMut,
        recv: impl FnOnce(&TcpStream, &mut BytesMut) -> std::io::Result<bool>,
    ) -> std::io::Result<bool> {
        if !self.early.is_empty() {
            rbuf.extend_from_slice(&self.early);
            self.early = BytesMut::new();
        }
        let open = recv(&self.tcp, &mut self.cipher)?;
        self.feed(rbuf)?;
        // Handshake and post-handshake messages (session tickets, key
        // updates, alerts) go out at once.
        self.flush()?;
        Ok(open && !self.peer_closed)
    }

    fn feed(&mut self, rbuf: &mut BytesMut) -> std::io::Result<()> {
        use bytes::Buf;
        use std::io::BufRead;
        while !self.cipher.is_empty() {
            let mut wire = &self.cipher[..];
            let n = self.tls.read_tls(&mut wire)?;
            self.cipher.advance(n);
            let state = match self.tls.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // The alert rustls queued tells the peer why.
                    let _ = self.flush();
                    return Err(tls_error(e));
                }
            };
            let mut plain = state.plaintext_bytes_to_read();
            if plain > 0 {
                rbuf.reserve(plain);
                // Chunk by chunk straight from rustls's buffer: one copy.
                let mut reader = self.tls.reader();
                while plain > 0 {
                    let chunk = reader.fill_buf()?;
                    if chunk.is_empty() {
                        break;
                    }
                    let n = chunk.len().min(plain);
                    rbuf.extend_from_slice(&chunk[..n]);
                    reader.consume(n);
                    plain -= n;
                }
            }
            if state.peer_has_closed() {
                self.peer_closed = true;
            }
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::io::Write;
        self.flush()?;
        let n = self.tls.writer().write(buf)?;
        self.flush()?;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut SocketWriter(&self.tcp)) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
