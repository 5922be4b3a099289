//! Structure-aware fuzzing (proptest) of what the agent reads from strangers: API
//! request bodies (shaped like each request type, with values of every JSON type and
//! hostile strings and numbers) and DNS messages from jobs. `PROPTEST_CASES` sets the
//! number of cases (256 by default; `scripts/fuzz.sh N` runs more).

use std::sync::Arc;

use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::model::{
    EtcdMemberRequest, ExecRequest, ImportRequest, JobRequest, JoinRequest, ProbeListen, ProbeSend,
    PullRequest,
};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,16}",
        "[a-z0-9/:._@-]{0,24}",
        prop::sample::select(vec![
            "",
            "/",
            "..",
            "../../etc",
            "/etc/passwd\0",
            "busybox",
            "busybox:latest",
            "http://127.0.0.1:2379",
            "KEY=VALUE",
            "=",
            "a\nb",
            "\u{202e}",
            "sha256:",
        ])
        .prop_map(str::to_owned),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![0i64, 1, -1, 65535, 65536, 6 * 1024 * 1024])
            .prop_map(Value::from),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        text().prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field of a request type: its name and a strategy for values of its own shape.
type Field = (&'static str, fn() -> BoxedStrategy<Value>);

/// An object with some of `keys` (each a value of any shape, often of the right one) and
/// now and then a key the type does not have.
fn shaped(keys: &'static [Field]) -> BoxedStrategy<Value> {
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = keys
        .iter()
        .map(|(k, typed)| {
            prop::option::weighted(0.8, prop_oneof![3 => typed(), 1 => value()])
                .prop_map(move |v| v.map(|v| ((*k).to_owned(), v)))
                .boxed()
        })
        .collect();
    (fields, prop::option::weighted(0.1, (text(), value())))
        .prop_map(|(fields, extra)| {
            let mut m = Map::new();
            for (k, v) in fields.into_iter().flatten().chain(extra) {
                m.insert(k, v);
            }
            Value::Object(m)
        })
        .boxed()
}

fn s() -> BoxedStrategy<Value> {
    text().prop_map(Value::from).boxed()
}
fn n() -> BoxedStrategy<Value> {
    number().boxed()
}
fn b() -> BoxedStrategy<Value> {
    any::<bool>().prop_map(Value::from).boxed()
}
fn strings() -> BoxedStrategy<Value> {
    prop::collection::vec(text().prop_map(Value::from), 0..4)
        .prop_map(Value::Array)
        .boxed()
}
fn resources() -> BoxedStrategy<Value> {
    shaped(&[("memory", n), ("cpus", n), ("pids_limit", n)])
}
fn port() -> BoxedStrategy<Value> {
    shaped(&[
        ("host_ip", s),
        ("host_port", n),
        ("container_port", n),
        ("protocol", || {
            prop::sample::select(vec!["tcp", "udp", "sctp"])
                .prop_map(Value::from)
                .boxed()
        }),
    ])
}
fn ports() -> BoxedStrategy<Value> {
    prop::collection::vec(port(), 0..3)
        .prop_map(Value::Array)
        .boxed()
}
fn services() -> BoxedStrategy<Value> {
    prop::collection::vec(
        shaped(&[
            ("name", s),
            ("port", n),
            ("check", || {
                shaped(&[
                    ("kind", s),
                    ("path", s),
                    ("interval_ms", n),
                    ("timeout_ms", n),
                    ("fall", n),
                    ("rise", n),
                ])
            }),
        ]),
        0..3,
    )
    .prop_map(Value::Array)
    .boxed()
}
fn volumes() -> BoxedStrategy<Value> {
    prop::collection::vec(
        shaped(&[("source", s), ("target", s), ("read_only", b)]),
        0..3,
    )
    .prop_map(Value::Array)
    .boxed()
}
fn restart() -> BoxedStrategy<Value> {
    shaped(&[
        ("policy", || {
            prop::sample::select(vec![
                "no",
                "on-failure",
                "always",
                "unless-stopped",
                "bogus",
            ])
            .prop_map(Value::from)
            .boxed()
        }),
        ("max_retries", n),
    ])
}
fn network() -> BoxedStrategy<Value> {
    prop::sample::select(vec!["bridge", "host", "none", "overlay"])
        .prop_map(Value::from)
        .boxed()
}
fn members() -> BoxedStrategy<Value> {
    prop::collection::vec(
        shaped(&[("name", s), ("peer_url", s), ("client_url", s)]),
        0..4,
    )
    .prop_map(Value::Array)
    .boxed()
}
fn labels() -> BoxedStrategy<Value> {
    prop::collection::btree_map(text(), text().prop_map(Value::from), 0..3)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
        .boxed()
}

const JOB: &[Field] = &[
    ("image", s),
    ("name", s),
    ("cmd", strings),
    ("entrypoint", strings),
    ("env", strings),
    ("workdir", s),
    ("user", s),
    ("hostname", s),
    ("resources", resources),
    ("network", network),
    ("ports", ports),
    ("dns", strings),
    ("services", services),
    ("tty", b),
    ("stdin", b),
    ("auto_remove", b),
    ("restart", restart),
    ("start", b),
    ("volumes", volumes),
    ("labels", labels),
];

/// What the server does with a body: parse it; and what it stores and answers (the
/// value, serialized) parses back to the same value, byte for byte.
fn round_trip<T: Serialize + DeserializeOwned>(body: &[u8]) -> Result<Option<T>, TestCaseError> {
    let Ok(parsed) = crate::api::parse_json::<T>(body) else {
        return Ok(None);
    };
    let text = serde_json::to_string(&parsed).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let again: T = serde_json::from_str(&text)
        .map_err(|e| TestCaseError::fail(format!("{text}: does not parse back: {e}")))?;
    let text_again =
        serde_json::to_string(&again).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(
        &text_again,
        &text,
        "a value changed on its way through JSON"
    );
    Ok(Some(parsed))
}

const JOB_ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

proptest! {
    #[test]
    fn job_requests(body in shaped(JOB)) {
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        if let Some(req) = round_trip::<JobRequest>(&bytes)? {
            // The checks a create runs before touching anything.
            let image = oci_spec::image::ImageConfiguration::default();
            if let Ok(config) = crate::jobs::config::resolve(&req, &image, JOB_ID, Default::default()) {
                if let Some(c) = config.resources.cpus {
                    prop_assert!((0.01..=1024.0).contains(&c), "cpus {} accepted", c);
                }
                for p in &config.ports {
                    prop_assert!(p.container_port != 0, "container port 0 accepted");
                }
            }
        }
    }

    #[test]
    fn other_request_bodies(
        exec in shaped(&[("cmd", strings), ("env", strings), ("workdir", s), ("user", s), ("tty", b), ("stdin", b)]),
        pull in shaped(&[("reference", s), ("platform", s), ("auth", || shaped(&[("username", s), ("password", s)]))]),
        import in shaped(&[("path", s), ("tag", s)]),
        join in shaped(&[("cluster_id", s), ("etcd", strings)]),
        member in shaped(&[("cluster_id", s), ("name", s), ("members", members)]),
        listen in shaped(&[("port", n), ("nonce", s), ("timeout_ms", n)]),
        send in shaped(&[("address", s), ("tcp_port", n), ("udp_port", n), ("nonce", s)]),
    ) {
        let bytes = |v: &Value| serde_json::to_vec(v).unwrap_or_default();
        round_trip::<ExecRequest>(&bytes(&exec))?;
        if let Some(p) = round_trip::<PullRequest>(&bytes(&pull))? {
            let _ = p.reference.parse::<image::Reference>();
            if let Some(platform) = &p.platform {
                let _ = platform.parse::<image::pull::Platform>();
            }
        }
        round_trip::<ImportRequest>(&bytes(&import))?;
        round_trip::<JoinRequest>(&bytes(&join))?;
        round_trip::<EtcdMemberRequest>(&bytes(&member))?;
        round_trip::<ProbeListen>(&bytes(&listen))?;
        round_trip::<ProbeSend>(&bytes(&send))?;
    }

    #[test]
    fn request_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = round_trip::<JobRequest>(&bytes)?;
        let _ = round_trip::<ExecRequest>(&bytes)?;
    }
}

// DNS: queries a job may send to the discovery DNS server.

fn dns_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "web.discoverd.",
            "leader.web.discoverd.",
            "WEB.DISCOVERD",
            "discoverd.",
            ".discoverd.",
            "a.b.web.discoverd.",
            "leader.discoverd.",
            "web.discoverd.example.",
            "xn--web.discoverd.",
        ])
        .prop_map(str::to_owned),
        "([a-z0-9-]{1,10}\\.){0,4}discoverd\\.",
    ]
}

fn dns_query() -> impl Strategy<Value = Vec<u8>> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    (
        any::<u16>(),
        prop::collection::vec(dns_name(), 0..3),
        prop::sample::select(vec![
            RecordType::A,
            RecordType::AAAA,
            RecordType::ANY,
            RecordType::TXT,
            RecordType::SRV,
            RecordType::Unknown(65000),
        ]),
        prop::sample::select(vec![OpCode::Query, OpCode::Status, OpCode::Update]),
        any::<bool>(),
    )
        .prop_map(|(id, names, t, op, response)| {
            let mut m = Message::new();
            m.set_id(id).set_op_code(op).set_recursion_desired(true);
            if response {
                m.set_message_type(MessageType::Response);
            }
            for n in names {
                if let Ok(name) = Name::from_ascii(&n) {
                    m.add_query(Query::query(name, t));
                }
            }
            m.to_vec().unwrap_or_default()
        })
}

fn dns_server() -> Arc<super::grid::dns::DnsServer> {
    super::grid::dns::server_with_web(&[
        ("a", ([100, 100, 1, 5], 80).into(), 5),
        (
            "b",
            "[fd00::5]:80"
                .parse()
                .unwrap_or_else(|_| ([127, 0, 0, 1], 80).into()),
            6,
        ),
    ])
}

/// The answer to `query` (if any) is a response with the query's id, and answers for the
/// zone are A records with TTL 0.
fn check_dns(query: &[u8]) -> Result<(), TestCaseError> {
    use hickory_proto::op::{Message, MessageType};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let server = dns_server();
    let Some(answer) = rt.block_on(server.answer(query, false)) else {
        return Ok(());
    };
    let asked = Message::from_vec(query).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let reply = Message::from_vec(&answer)
        .map_err(|e| TestCaseError::fail(format!("the answer does not parse: {e}")))?;
    prop_assert_eq!(reply.id(), asked.id());
    prop_assert_eq!(reply.message_type(), MessageType::Response);
    for r in reply.answers() {
        prop_assert_eq!(r.ttl(), 0);
        prop_assert_eq!(r.record_type(), hickory_proto::rr::RecordType::A);
    }
    Ok(())
}

proptest! {
    #[test]
    fn dns_queries(query in dns_query()) {
        check_dns(&query)?;
    }

    #[test]
    fn dns_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300), query in dns_query(), cut in 0usize..300) {
        check_dns(&bytes)?;
        // A valid query cut short, or with garbage after it.
        check_dns(&query[..cut.min(query.len())])?;
        let mut longer = query.clone();
        longer.extend_from_slice(&bytes);
        check_dns(&longer)?;
    }
}
