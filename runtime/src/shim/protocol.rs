//! The messages between the agent and a shim: the start-up handshake on the shim's
//! stdin/stdout, and the control requests on `shim.sock`. Every message is one JSON line.

use serde::{Deserialize, Serialize};

use crate::exit::ExitStatus;

/// What the shim writes on its stdout during start-up.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Handshake {
    /// The container exists, init waits for `start`. `pid` is the container's init.
    Created {
        pid: i32,
        #[serde(default)]
        shim_pid: i32,
    },
    Started {
        pid: i32,
    },
    Error(String),
}

/// The line the agent writes to let a created container run.
pub const START: &str = "start";

/// A control request on `shim.sock`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Send a signal to the container's init process.
    Signal {
        signal: i32,
    },
    /// Answered once, when the container has exited.
    Wait,
    State,
    /// Attach to the process's stdin: after the `{"ok":true}` reply, everything the
    /// client sends on this connection is written to the process's stdin; the client
    /// shutting down its sending side (or going away) closes a stdin pipe (a terminal
    /// stays open). One client at a time.
    Stdin,
    /// Sets the terminal's window size (TIOCSWINSZ); only for a process with a terminal.
    Resize {
        rows: u16,
        cols: u16,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Stopped,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShimState {
    pub pid: i32,
    pub status: Status,
}

/// A control response. Untagged so that the lines read naturally:
/// `{"ok":true}`, `{"exit":{...}}`, `{"pid":1,"status":"running"}`, `{"error":"..."}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum Response {
    Ok { ok: bool },
    Exit { exit: ExitStatus },
    State(ShimState),
    Error { error: String },
}

/// Serializes a message as a line. The types above hold no maps with non-string keys or
/// floats that could fail, so this never fails in practice; the fallback keeps it total.
pub fn line<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(msg)
        .unwrap_or_else(|e| format!(r#"{{"error":"cannot encode reply: {e}"}}"#).into_bytes());
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let s = |m: &Handshake| String::from_utf8(line(m)).unwrap();
        assert_eq!(
            s(&Handshake::Created {
                pid: 7,
                shim_pid: 6
            }),
            "{\"created\":{\"pid\":7,\"shim_pid\":6}}\n"
        );
        assert_eq!(
            s(&Handshake::Started { pid: 7 }),
            "{\"started\":{\"pid\":7}}\n"
        );
        assert_eq!(s(&Handshake::Error("x".into())), "{\"error\":\"x\"}\n");

        let r: Request = serde_json::from_str(r#"{"op":"signal","signal":15}"#).unwrap();
        assert_eq!(r, Request::Signal { signal: 15 });
        let r: Request = serde_json::from_str(r#"{"op":"wait"}"#).unwrap();
        assert_eq!(r, Request::Wait);
        let r: Request = serde_json::from_str(r#"{"op":"stdin"}"#).unwrap();
        assert_eq!(r, Request::Stdin);
        let r: Request = serde_json::from_str(r#"{"op":"resize","rows":33,"cols":101}"#).unwrap();
        assert_eq!(
            r,
            Request::Resize {
                rows: 33,
                cols: 101
            }
        );
        assert_eq!(
            String::from_utf8(line(&Request::Resize { rows: 2, cols: 3 })).unwrap(),
            "{\"op\":\"resize\",\"rows\":2,\"cols\":3}\n"
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"resize","rows":-1,"cols":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());

        for text in [
            r#"{"ok":true}"#,
            r#"{"pid":3,"status":"running"}"#,
            r#"{"error":"nope"}"#,
            r#"{"exit":{"code":0,"signal":null,"oom_killed":false,"finished_at":"2026-11-25T13:00:00.123456789Z"}}"#,
        ] {
            let r: Response = serde_json::from_str(text).unwrap();
            let back: serde_json::Value = serde_json::from_slice(&line(&r)).unwrap();
            let orig: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(back, orig, "{text}");
        }
    }
}
