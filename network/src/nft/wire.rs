//! The nf_tables netlink wire format, just as much of it as our table needs: message
//! headers, attributes, batches, and a socket that sends a batch and collects the kernel's
//! answers. Constants are from `linux/netfilter/nf_tables.h` and `linux/netfilter/nfnetlink.h`
//! (uapi, stable ABI). Integer attributes of nf_tables are big-endian on the wire; register
//! contents (`NFTA_DATA_VALUE`) are raw bytes as the packet or the kernel lays them out.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr};

/// Why a transaction with the kernel's nf_tables failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The socket itself failed (open, send, receive, timeout).
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused a message of the batch (the whole batch was then rolled back).
    #[error("the kernel refused {what}: {source}{}", hint(source))]
    Refused {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The kernel answered something we cannot parse.
    #[error("malformed answer from the kernel: {0}")]
    Malformed(&'static str),
}

impl NftError {
    /// The errno the kernel answered with, if it refused a message.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => {
            " (is nf_tables with the nat, masq, fib and ct expressions available in this kernel?)"
        }
        Some(libc::ENOENT) => " (a table, a chain or a kernel module of nf_tables is missing)",
        Some(libc::EPERM) => " (CAP_NET_ADMIN is required)",
        _ => "",
    }
}

pub const NETLINK_NETFILTER: isize = 12;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
pub const NFPROTO_IPV4: u8 = 2;

pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_GETTABLE: u16 = 1;
pub const NFT_MSG_DELTABLE: u16 = 2;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_GETRULE: u16 = 7;
pub const NFT_MSG_DELRULE: u16 = 8;

pub const NFTA_TABLE_NAME: u16 = 1;
pub const NFTA_CHAIN_TABLE: u16 = 1;
pub const NFTA_CHAIN_NAME: u16 = 3;
pub const NFTA_CHAIN_HOOK: u16 = 4;
pub const NFTA_CHAIN_POLICY: u16 = 5;
pub const NFTA_CHAIN_TYPE: u16 = 7;
pub const NFTA_HOOK_HOOKNUM: u16 = 1;
pub const NFTA_HOOK_PRIORITY: u16 = 2;
pub const NFTA_RULE_TABLE: u16 = 1;
pub const NFTA_RULE_CHAIN: u16 = 2;
pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub const NFTA_LIST_ELEM: u16 = 1;
pub const NFTA_EXPR_NAME: u16 = 1;
pub const NFTA_EXPR_DATA: u16 = 2;
pub const NFTA_DATA_VALUE: u16 = 1;
pub const NFTA_DATA_VERDICT: u16 = 2;
pub const NFTA_VERDICT_CODE: u16 = 1;
pub const NFTA_VERDICT_CHAIN: u16 = 2;

/// Builds one netlink message: header, `nfgenmsg`, then attributes. Nested attributes
/// are opened with [`Msg::begin_nested`] and closed with [`Msg::end_nested`], which
/// patches their length.
pub struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(msg_type: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched in finish
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it in
        // struct nfgenmsg { u8 nfgen_family; u8 version; __be16 res_id; }
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Msg { buf }
    }

    /// A message of the nf_tables subsystem.
    pub fn nft(kind: u16, flags: u16, seq: u32) -> Msg {
        Msg::new(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | flags,
            seq,
            NFPROTO_IPV4,
            0,
        )
    }

    pub fn put(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        // Attribute lengths are u16; nothing we send comes close.
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    pub fn put_str(&mut self, kind: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.put(kind, &v);
    }

    pub fn put_be32(&mut self, kind: u16, v: u32) {
        self.put(kind, &v.to_be_bytes());
    }

    /// Opens a nested attribute; returns its offset for [`Msg::end_nested`].
    pub fn begin_nested(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    pub fn end_nested(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// An atomic nf_tables transaction: every message between BATCH_BEGIN and BATCH_END is
/// applied, or none is.
pub struct Batch {
    buf: Vec<u8>,
    /// Sequence number and description of each message that asks for an ack.
    pending: Vec<(u32, String)>,
    next_seq: u32,
}

impl Batch {
    pub fn new() -> Batch {
        // Sequence numbers only have to be distinct within one socket, and every batch
        // gets a socket of its own.
        let mut batch = Batch {
            buf: Vec::with_capacity(4096),
            pending: Vec::new(),
            next_seq: 1,
        };
        let begin = Msg::new(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        batch.buf.extend_from_slice(&begin.finish());
        batch
    }

    /// Starts a message; hand it back with [`Batch::push`].
    pub fn msg(&mut self, kind: u16, flags: u16) -> Msg {
        let seq = self.next_seq;
        self.next_seq += 1;
        Msg::nft(kind, flags | NLM_F_ACK, seq)
    }

    pub fn push(&mut self, msg: Msg, what: impl Into<String>) {
        let seq = u32::from_ne_bytes([msg.buf[8], msg.buf[9], msg.buf[10], msg.buf[11]]);
        self.pending.push((seq, what.into()));
        self.buf.extend_from_slice(&msg.finish());
    }

    /// Sends the batch and waits for the kernel's verdict on every message.
    pub fn commit(mut self) -> Result<(), NftError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let end = Msg::new(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            0,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        self.buf.extend_from_slice(&end.finish());
        let sock = open_socket()?;
        send_all(&sock, &self.buf)?;
        let mut answered = 0usize;
        let mut first_error: Option<NftError> = None;
        let mut rx = Vec::with_capacity(64 * 1024);
        // The kernel answers every message of the batch (an ack, or an error for each
        // message that failed), so we read until all of them are in.
        while answered < self.pending.len() {
            rx.clear();
            sock.recv(&mut rx, 0).map_err(NftError::Socket)?;
            for m in Messages::new(&rx) {
                let m = m?;
                if m.kind != NLMSG_ERROR {
                    continue;
                }
                let code = m.error_code()?;
                if let Some(idx) = self.pending.iter().position(|(s, _)| *s == m.seq) {
                    answered += 1;
                    if code != 0 && first_error.is_none() {
                        first_error = Some(NftError::Refused {
                            what: self.pending[idx].1.clone(),
                            source: io::Error::from_raw_os_error(-code),
                        });
                    }
                } else if code != 0 {
                    // An error about the batch framing itself (seq 0): nothing more comes.
                    return Err(NftError::Refused {
                        what: "the batch".into(),
                        source: io::Error::from_raw_os_error(-code),
                    });
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Sends one request with `NLM_F_DUMP` (or a plain get) and returns the payloads of the
/// answers of type `want` (the bytes after `nfgenmsg`).
pub fn request(
    kind: u16,
    dump: bool,
    attrs: impl FnOnce(&mut Msg),
) -> Result<Vec<Vec<u8>>, NftError> {
    let flags = if dump { NLM_F_DUMP } else { NLM_F_ACK };
    let mut msg = Msg::nft(kind, flags, 1);
    attrs(&mut msg);
    let sock = open_socket()?;
    send_all(&sock, &msg.finish())?;
    let mut out = Vec::new();
    let mut rx = Vec::with_capacity(64 * 1024);
    loop {
        rx.clear();
        sock.recv(&mut rx, 0).map_err(NftError::Socket)?;
        for m in Messages::new(&rx) {
            let m = m?;
            match m.kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = m.error_code()?;
                    if code != 0 {
                        return Err(NftError::Refused {
                            what: "a query".into(),
                            source: io::Error::from_raw_os_error(-code),
                        });
                    }
                    return Ok(out);
                }
                _ => {
                    // A plain get answers one message, then the ack we asked for.
                    if m.payload.len() >= 4 {
                        out.push(m.payload[4..].to_vec());
                    }
                }
            }
        }
    }
}

fn open_socket() -> Result<Socket, NftError> {
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(NftError::Socket)?;
    sock.bind_auto().map_err(NftError::Socket)?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(NftError::Socket)?;
    // A kernel that never answers must not hang the agent.
    let tv = libc::timeval {
        tv_sec: TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid fd, option and a pointer to a live timeval of the
    // size we pass.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(NftError::Socket(io::Error::last_os_error()));
    }
    // Big batches (hundreds of published ports) need room for all their acks.
    let _ = sock.set_rx_buf_sz(1 << 20);
    Ok(sock)
}

fn send_all(sock: &Socket, buf: &[u8]) -> Result<(), NftError> {
    let n = sock.send(buf, 0).map_err(NftError::Socket)?;
    if n != buf.len() {
        return Err(NftError::Socket(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short netlink send: {n} of {} bytes", buf.len()),
        )));
    }
    Ok(())
}

/// One received netlink message.
pub struct RxMsg<'a> {
    pub kind: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

impl RxMsg<'_> {
    /// The (negative) errno of an `NLMSG_ERROR`, 0 for an ack.
    fn error_code(&self) -> Result<i32, NftError> {
        let b = self
            .payload
            .get(0..4)
            .ok_or(NftError::Malformed("short error message"))?;
        Ok(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Iterates over the netlink messages in a datagram.
pub struct Messages<'a> {
    buf: &'a [u8],
}

impl<'a> Messages<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Messages { buf }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<RxMsg<'a>, NftError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < 16 {
            return None;
        }
        let b = self.buf;
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < 16 || len > b.len() {
            self.buf = &[];
            return Some(Err(NftError::Malformed("bad message length")));
        }
        let msg = RxMsg {
            kind: u16::from_ne_bytes([b[4], b[5]]),
            seq: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            payload: &b[16..len],
        };
        let next = (len + 3) & !3;
        self.buf = if next >= b.len() { &[] } else { &b[next..] };
        Some(Ok(msg))
    }
}

/// Iterates over the attributes in `buf`: `(type without flags, payload)`.
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        let next = (len + 3) & !3;
        buf = if next >= buf.len() { &[] } else { &buf[next..] };
        Some((kind, payload))
    })
}

/// A NUL-terminated string attribute.
pub fn attr_str(payload: &[u8]) -> &str {
    let end = payload
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(payload.len());
    std::str::from_utf8(&payload[..end]).unwrap_or("")
}

/// How long we wait for any answer of the kernel before giving up.
const TIMEOUT: Duration = Duration::from_secs(5);
