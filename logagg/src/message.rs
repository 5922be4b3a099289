//! One job's log line on the wire: a syslog message (RFC 5424) in an octet-counted
//! frame (RFC 6587: `LEN SP MSG`), as Flynn's agents sent them. Any syslog tool can
//! read the stream; the fields Flynn needs ride in the structured data.
//!
//! ```text
//! <14>1 2026-12-05T10:00:00.123456789Z HOST APP JOB stdout [flynn@0 type="web" seq="42"] text
//! ```
//! PRI 14 (user, info) for stdout, 11 (user, err) for stderr; HOSTNAME the host id,
//! APP-NAME the app, PROCID the job id, MSGID the stream. `seq` grows with each line of
//! a job (not by one: the agent's shipper sends the line's byte offset in the job's log
//! file + 1, which names where to resume), so a shipper that resends after a break is
//! deduplicated.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The largest frame accepted (a line is cut to fit by the shipper).
pub const MAX_FRAME: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub app: String,
    pub process_type: String,
    pub job_id: String,
    pub host_id: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub time: DateTime<Utc>,
    /// Grows with each line of the job, from 1 (the agent: byte offset in the log + 1).
    pub seq: u64,
    pub msg: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {0:?} is not a number")]
    BadLength(String),
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("not a Flynn syslog message: {0}")]
    BadMessage(&'static str),
}

/// A token of the header: no spaces; `-` is syslog's nil value.
fn token(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(128)
        .collect();
    if t.is_empty() { "-".into() } else { t }
}

/// A structured-data parameter value: `"`, `\` and `]` escaped (RFC 5424 §6.3.3).
fn sd_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl LogLine {
    /// The framed message, ready to write.
    pub fn frame(&self) -> Vec<u8> {
        let pri = if self.stream == "stderr" { 11 } else { 14 };
        let mut msg = format!(
            "<{pri}>1 {} {} {} {} {} [flynn@0 type=\"{}\" seq=\"{}\"] ",
            self.time
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            token(&self.host_id),
            token(&self.app),
            token(&self.job_id),
            token(&self.stream),
            sd_value(&self.process_type),
            self.seq
        )
        .into_bytes();
        msg.extend_from_slice(self.msg.as_bytes());
        let mut out = format!("{} ", msg.len()).into_bytes();
        out.extend_from_slice(&msg);
        out
    }

    pub fn parse(msg: &[u8]) -> Result<LogLine, FrameError> {
        let text = std::str::from_utf8(msg).map_err(|_| FrameError::BadMessage("not UTF-8"))?;
        let rest = text
            .strip_prefix('<')
            .and_then(|r| r.split_once(">1 "))
            .map(|(_, r)| r)
            .ok_or(FrameError::BadMessage("no <PRI>1 header"))?;
        let mut it = rest.splitn(6, ' ');
        let mut next = |what| it.next().ok_or(FrameError::BadMessage(what));
        let time = next("no timestamp")?;
        let host = next("no hostname")?;
        let app = next("no app name")?;
        let job = next("no process id")?;
        let stream = next("no message id")?;
        let rest = next("no structured data")?;
        let time = DateTime::parse_from_rfc3339(time)
            .map_err(|_| FrameError::BadMessage("bad timestamp"))?
            .with_timezone(&Utc);
        let sd = rest
            .strip_prefix("[flynn@0 ")
            .ok_or(FrameError::BadMessage("no [flynn@0 ...] data"))?;
        // Parameters until the unescaped ']'.
        let mut params = Vec::new();
        let mut chars = sd.char_indices().peekable();
        let mut end = None;
        while let Some((_, c)) = chars.peek().copied() {
            if c == ']' {
                end = chars.next().map(|(i, _)| i);
                break;
            }
            if c == ' ' {
                chars.next();
                continue;
            }
            let mut name = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                name.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(FrameError::BadMessage("a parameter value is not quoted"));
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(e);
                        }
                    }
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(FrameError::BadMessage("a parameter value is not closed"));
            }
            params.push((name, value));
        }
        let end = end.ok_or(FrameError::BadMessage("structured data not closed"))?;
        let msg = sd[end + 1..].strip_prefix(' ').unwrap_or(&sd[end + 1..]);
        let param = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        Ok(LogLine {
            app: app.to_string(),
            process_type: param("type").unwrap_or_default(),
            job_id: job.to_string(),
            host_id: host.to_string(),
            stream: stream.to_string(),
            time,
            seq: param("seq")
                .and_then(|s| s.parse().ok())
                .ok_or(FrameError::BadMessage("no seq"))?,
            msg: msg.to_string(),
        })
    }
}

/// Splits octet-counted frames out of `buf` (what is left of an incomplete frame
/// stays in it).
pub fn take_frames(buf: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        let Some(sp) = rest.iter().take(8).position(|b| *b == b' ') else {
            if rest.len() >= 8 {
                return Err(FrameError::BadLength(
                    String::from_utf8_lossy(&rest[..8]).into_owned(),
                ));
            }
            break;
        };
        let len_text = std::str::from_utf8(&rest[..sp]).unwrap_or("?");
        let len: usize = len_text
            .parse()
            .map_err(|_| FrameError::BadLength(len_text.to_string()))?;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if rest.len() < sp + 1 + len {
            break;
        }
        out.push(rest[sp + 1..sp + 1 + len].to_vec());
        at += sp + 1 + len;
    }
    buf.drain(..at);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(msg: &str) -> LogLine {
        LogLine {
            app: "demo".into(),
            process_type: "we\"b]".into(),
            job_id: "j1".into(),
            host_id: "h1".into(),
            stream: "stderr".into(),
            time: "2026-12-05T10:00:00.123456789Z".parse().unwrap(),
            seq: 42,
            msg: msg.into(),
        }
    }

    #[test]
    fn frames_round_trip_and_split() {
        let a = line("hello [world] \"quoted\"");
        let b = line("");
        let mut buf = a.frame();
        buf.extend(b.frame());
        let partial = b.frame();
        buf.extend(&partial[..5]);
        let frames = take_frames(&mut buf).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(LogLine::parse(&frames[0]).unwrap(), a);
        assert_eq!(LogLine::parse(&frames[1]).unwrap(), b);
        assert_eq!(buf, &partial[..5]);
        assert!(
            String::from_utf8(a.frame())
                .unwrap()
                .contains("<11>1 2026-12-05T10:00:00.123456789Z h1 demo j1 stderr")
        );
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut buf = b"abc hello".to_vec();
        assert_eq!(
            take_frames(&mut buf),
            Err(FrameError::BadLength("abc".into()))
        );
        let mut buf = b"99999999 x".to_vec();
        assert!(take_frames(&mut buf).is_err());
        let mut buf = b"123456789".to_vec();
        assert!(take_frames(&mut buf).is_err());
        assert!(LogLine::parse(b"<14>1 garbage").is_err());
        assert!(
            LogLine::parse(b"<14>1 2026-12-05T10:00:00Z h a j stdout [flynn@0 type=\"x\"] m")
                .is_err(),
            "no seq"
        );
    }
}
