//! Our nftables table, spoken over netlink (`NETLINK_NETFILTER`) without `nft` or a C
//! library. See the crate documentation for why this is not `rustables`.
//!
//! The table (`table ip flynn`):
//!
//! ```text
//! chain published { }     # one DNAT rule per published port, rebuilt from state in one batch
//! chain prerouting  { type nat hook prerouting priority -100; fib daddr type local jump published }
//! chain output      { type nat hook output priority -100;     fib daddr type local jump published }
//! chain postrouting { type nat hook postrouting priority 100;
//!     ip saddr SUBNET ip daddr CLUSTER accept                         # overlay (with a cluster)
//!     ip saddr SUBNET oifname != BRIDGE masquerade                    # egress
//!     oifname BRIDGE ct status dnat ip saddr 127.0.0.0/8 masquerade   # host's 127.0.0.1 → job
//!     oifname BRIDGE ct status dnat ip saddr SUBNET masquerade }      # hairpin
//! chain forward { type filter hook forward priority 0; policy accept;
//!     oifname BRIDGE ip saddr CLUSTER accept                          # overlay (with a cluster)
//!     iifname BRIDGE accept
//!     oifname BRIDGE ct state established,related accept
//!     oifname BRIDGE ct status dnat accept
//!     oifname BRIDGE drop }                                           # no unpublished inbound
//! ```
//!
//! The `input` chain and the first rules of `forward` keep jobs off the control plane
//! (`guard.rs`).
//!
//! And one that keeps job-to-job traffic out of conntrack (NET: the cluster network
//! when there is one, else the host's subnet):
//!
//! ```text
//! chain untracked { type filter hook prerouting priority -300;
//!     ip saddr NET ip daddr NET fib daddr type != local notrack }
//! ```
//!
//! A published-port rule is
//! `meta l4proto P th dport HOSTPORT [ip daddr HOSTIP] dnat to IP:PORT`.

mod guard;
mod wire;

use std::net::Ipv4Addr;

pub use guard::ControlPlane;
pub use wire::NftError;
use wire::*;

use crate::config::Ipv4Net;
use crate::port::{PortMapping, Protocol};

/// The name of our table (family `ip`). Nothing else in the host's ruleset is touched.
pub const TABLE: &str = "flynn";
pub const CHAIN_PUBLISHED: &str = "published";
/// `type filter hook prerouting priority raw`: job-to-job traffic is not tracked.
pub const CHAIN_UNTRACKED: &str = "untracked";

const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_INET_POST_ROUTING: u32 = 4;
const NF_IP_PRI_RAW: i32 = -300;
const NF_IP_PRI_NAT_DST: i32 = -100;
const NF_IP_PRI_FILTER: i32 = 0;
const NF_IP_PRI_NAT_SRC: i32 = 100;
const NF_ACCEPT: i32 = 1;
const NF_DROP: i32 = 0;
const NFT_JUMP: i32 = -3;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;

const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_STATUS: u32 = 2;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFT_NAT_DNAT: u32 = 1;
const RTN_LOCAL: u32 = 2;
/// `ct state established,related`: bits (1 << (IP_CT_ESTABLISHED + 1)) | (1 << (IP_CT_RELATED + 1)).
const CT_STATE_ESTABLISHED_RELATED: u32 = 0x2 | 0x4;
/// `IPS_DST_NAT` of `enum ip_conntrack_status`.
const IPS_DST_NAT: u32 = 1 << 5;
const IFNAMSIZ: usize = 16;

/// One nf_tables expression, as many kinds as our rules use.
#[derive(Debug, Clone)]
enum Expr {
    Meta {
        key: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: u32,
        data: Vec<u8>,
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Bitwise {
        reg: u32,
        mask: Vec<u8>,
    },
    Immediate {
        dreg: u32,
        data: Vec<u8>,
    },
    Verdict {
        code: i32,
        chain: Option<&'static str>,
    },
    Ct {
        key: u32,
        dreg: u32,
    },
    Fib {
        flags: u32,
        result: u32,
        dreg: u32,
    },
    Dnat {
        reg_addr: u32,
        reg_proto: u32,
    },
    Masq,
    Notrack,
}

impl Expr {
    fn encode(&self, m: &mut Msg) {
        let elem = m.begin_nested(NFTA_LIST_ELEM);
        let name = match self {
            Expr::Meta { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Payload { .. } => "payload",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Immediate { .. } | Expr::Verdict { .. } => "immediate",
            Expr::Ct { .. } => "ct",
            Expr::Fib { .. } => "fib",
            Expr::Dnat { .. } => "nat",
            Expr::Masq => "masq",
            Expr::Notrack => "notrack",
        };
        m.put_str(NFTA_EXPR_NAME, name);
        let data = m.begin_nested(NFTA_EXPR_DATA);
        match self {
            Expr::Meta { key, dreg } => {
                m.put_be32(1, *dreg); // NFTA_META_DREG
                m.put_be32(2, *key); // NFTA_META_KEY
            }
            Expr::Cmp { sreg, op, data } => {
                m.put_be32(1, *sreg); // NFTA_CMP_SREG
                m.put_be32(2, *op); // NFTA_CMP_OP
                let d = m.begin_nested(3); // NFTA_CMP_DATA
                m.put(NFTA_DATA_VALUE, data);
                m.end_nested(d);
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                m.put_be32(1, *dreg); // NFTA_PAYLOAD_DREG
                m.put_be32(2, *base);
                m.put_be32(3, *offset);
                m.put_be32(4, *len);
            }
            Expr::Bitwise { reg, mask } => {
                // reg = (reg & mask) ^ 0
                m.put_be32(1, *reg); // NFTA_BITWISE_SREG
                m.put_be32(2, *reg); // NFTA_BITWISE_DREG
                m.put_be32(3, mask.len() as u32); // NFTA_BITWISE_LEN
                let d = m.begin_nested(4); // NFTA_BITWISE_MASK
                m.put(NFTA_DATA_VALUE, mask);
                m.end_nested(d);
                let d = m.begin_nested(5); // NFTA_BITWISE_XOR
                m.put(NFTA_DATA_VALUE, &vec![0u8; mask.len()]);
                m.end_nested(d);
            }
            Expr::Immediate { dreg, data } => {
                m.put_be32(1, *dreg); // NFTA_IMMEDIATE_DREG
                let d = m.begin_nested(2); // NFTA_IMMEDIATE_DATA
                m.put(NFTA_DATA_VALUE, data);
                m.end_nested(d);
            }
            Expr::Verdict { code, chain } => {
                m.put_be32(1, NFT_REG_VERDICT);
                let d = m.begin_nested(2);
                let v = m.begin_nested(NFTA_DATA_VERDICT);
                m.put_be32(NFTA_VERDICT_CODE, *code as u32);
                if let Some(chain) = chain {
                    m.put_str(NFTA_VERDICT_CHAIN, chain);
                }
                m.end_nested(v);
                m.end_nested(d);
            }
            Expr::Ct { key, dreg } => {
                m.put_be32(1, *dreg); // NFTA_CT_DREG
                m.put_be32(2, *key); // NFTA_CT_KEY
            }
            Expr::Fib {
                flags,
                result,
                dreg,
            } => {
                m.put_be32(1, *dreg); // NFTA_FIB_DREG
                m.put_be32(2, *result); // NFTA_FIB_RESULT
                m.put_be32(3, *flags); // NFTA_FIB_FLAGS
            }
            Expr::Dnat {
                reg_addr,
                reg_proto,
            } => {
                m.put_be32(1, NFT_NAT_DNAT); // NFTA_NAT_TYPE
                m.put_be32(2, NFPROTO_IPV4 as u32); // NFTA_NAT_FAMILY
                m.put_be32(3, *reg_addr); // NFTA_NAT_REG_ADDR_MIN
                m.put_be32(4, *reg_addr); // NFTA_NAT_REG_ADDR_MAX
                m.put_be32(5, *reg_proto); // NFTA_NAT_REG_PROTO_MIN
                m.put_be32(6, *reg_proto); // NFTA_NAT_REG_PROTO_MAX
            }
            Expr::Masq | Expr::Notrack => {}
        }
        m.end_nested(data);
        m.end_nested(elem);
    }
}

fn ifname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(IFNAMSIZ, 0);
    v
}

fn iifname_is(name: &str) -> [Expr; 2] {
    [
        Expr::Meta {
            key: NFT_META_IIFNAME,
            dreg: NFT_REG_1,
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            op: NFT_CMP_EQ,
            data: ifname(name),
        },
    ]
}

fn oifname(name: &str, op: u32) -> [Expr; 2] {
    [
        Expr::Meta {
            key: NFT_META_OIFNAME,
            dreg: NFT_REG_1,
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            op,
            data: ifname(name),
        },
    ]
}

/// `ip saddr NET/LEN` (or daddr, with `offset` 16).
fn ip_in(offset: u32, net: Ipv4Net) -> [Expr; 3] {
    [
        Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset,
            len: 4,
            dreg: NFT_REG_1,
        },
        Expr::Bitwise {
            reg: NFT_REG_1,
            mask: net.netmask().octets().to_vec(),
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            op: NFT_CMP_EQ,
            data: net.addr().octets().to_vec(),
        },
    ]
}

/// `ct <key> & bits != 0`; conntrack's bitmasks are host-endian u32s.
fn ct_has(key: u32, bits: u32) -> [Expr; 3] {
    [
        Expr::Ct {
            key,
            dreg: NFT_REG_1,
        },
        Expr::Bitwise {
            reg: NFT_REG_1,
            mask: bits.to_ne_bytes().to_vec(),
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            op: NFT_CMP_NEQ,
            data: 0u32.to_ne_bytes().to_vec(),
        },
    ]
}

fn fib_daddr_local() -> [Expr; 2] {
    [
        Expr::Fib {
            flags: NFTA_FIB_F_DADDR,
            result: NFT_FIB_RESULT_ADDRTYPE,
            dreg: NFT_REG_1,
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            op: NFT_CMP_EQ,
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        },
    ]
}

/// Matches the layer-4 protocol `proto` and destination port `port`.
fn l4_dport(proto: u8, port: u16) -> [Expr; 4] {
    [
        Expr::Meta {
            key: NFT_META_L4PROTO,
            dreg: NFT_REG_1,
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            op: NFT_CMP_EQ,
            data: vec![proto],
        },
        Expr::Payload {
            base: NFT_PAYLOAD_TRANSPORT_HEADER,
            offset: 2,
            len: 2,
            dreg: NFT_REG_1,
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            op: NFT_CMP_EQ,
            data: port.to_be_bytes().to_vec(),
        },
    ]
}

/// Matches the IPv4 destination address `addr`.
fn daddr_is(addr: Ipv4Addr) -> [Expr; 2] {
    [
        Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset: 16,
            len: 4,
            dreg: NFT_REG_1,
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            op: NFT_CMP_EQ,
            data: addr.octets().to_vec(),
        },
    ]
}

fn verdict(code: i32) -> Expr {
    Expr::Verdict { code, chain: None }
}

/// The DNAT rule of one published port of an endpoint at `ip`.
fn dnat_rule(p: &PortMapping, ip: Ipv4Addr) -> Vec<Expr> {
    let proto = match p.protocol {
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
    };
    let mut r = l4_dport(proto, p.host_port).to_vec();
    if let Some(host_ip) = p.host_ip.filter(|a| !a.is_unspecified()) {
        r.extend(daddr_is(host_ip));
    }
    r.push(Expr::Immediate {
        dreg: NFT_REG_1,
        data: ip.octets().to_vec(),
    });
    r.push(Expr::Immediate {
        dreg: NFT_REG_2,
        data: p.container_port.to_be_bytes().to_vec(),
    });
    r.push(Expr::Dnat {
        reg_addr: NFT_REG_1,
        reg_proto: NFT_REG_2,
    });
    r
}

fn add_rule(b: &mut Batch, chain: &str, exprs: &[Expr], what: String) {
    let mut m = b.msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
    m.put_str(NFTA_RULE_TABLE, TABLE);
    m.put_str(NFTA_RULE_CHAIN, chain);
    let list = m.begin_nested(NFTA_RULE_EXPRESSIONS);
    for e in exprs {
        e.encode(&mut m);
    }
    m.end_nested(list);
    b.push(m, what);
}

fn add_table(b: &mut Batch) {
    let mut m = b.msg(NFT_MSG_NEWTABLE, NLM_F_CREATE);
    m.put_str(NFTA_TABLE_NAME, TABLE);
    b.push(m, format!("adding table ip {TABLE}"));
}

fn del_table(b: &mut Batch) {
    let mut m = b.msg(NFT_MSG_DELTABLE, 0);
    m.put_str(NFTA_TABLE_NAME, TABLE);
    b.push(m, format!("deleting table ip {TABLE}"));
}

/// A base chain: `(kind, hook, priority)`, or a regular chain with `None`.
fn add_chain(b: &mut Batch, name: &str, base: Option<(&str, u32, i32)>) {
    let mut m = b.msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE);
    m.put_str(NFTA_CHAIN_TABLE, TABLE);
    m.put_str(NFTA_CHAIN_NAME, name);
    if let Some((kind, hook, prio)) = base {
        let h = m.begin_nested(NFTA_CHAIN_HOOK);
        m.put_be32(NFTA_HOOK_HOOKNUM, hook);
        m.put_be32(NFTA_HOOK_PRIORITY, prio as u32);
        m.end_nested(h);
        m.put_be32(NFTA_CHAIN_POLICY, NF_ACCEPT as u32);
        m.put_str(NFTA_CHAIN_TYPE, kind);
    }
    b.push(m, format!("adding chain {name}"));
}

fn flush_chain(b: &mut Batch, chain: &str) {
    let mut m = b.msg(NFT_MSG_DELRULE, 0);
    m.put_str(NFTA_RULE_TABLE, TABLE);
    m.put_str(NFTA_RULE_CHAIN, chain);
    b.push(m, format!("flushing chain {chain}"));
}

/// What the ruleset is made from: the bridge, the subnet, and every published port with
/// the address of its endpoint.
pub struct Ruleset {
    pub bridge: String,
    pub subnet: Ipv4Net,
    /// The overlay's cluster network, when the host is in one.
    pub cluster: Option<Ipv4Net>,
    /// `(port, endpoint address, job id)`.
    pub published: Vec<(PortMapping, Ipv4Addr, String)>,
    /// What jobs must not reach (see `guard.rs`).
    pub control: ControlPlane,
}

impl Ruleset {
    fn add_published(&self, b: &mut Batch) {
        for (p, ip, job) in &self.published {
            add_rule(
                b,
                CHAIN_PUBLISHED,
                &dnat_rule(p, *ip),
                format!("the rule publishing {p} of job {job}"),
            );
        }
    }

    /// Replaces the whole table in one transaction: it is created if missing (so the
    /// delete that follows cannot fail), deleted with whatever it held, and built anew.
    /// Packets see the old table or the new one, never a mix.
    pub fn replace_table(&self) -> Result<(), NftError> {
        let mut b = Batch::new();
        add_table(&mut b);
        del_table(&mut b);
        add_table(&mut b);
        add_chain(&mut b, CHAIN_PUBLISHED, None);
        add_chain(
            &mut b,
            "prerouting",
            Some(("nat", NF_INET_PRE_ROUTING, NF_IP_PRI_NAT_DST)),
        );
        add_chain(
            &mut b,
            "output",
            Some(("nat", NF_INET_LOCAL_OUT, NF_IP_PRI_NAT_DST)),
        );
        add_chain(
            &mut b,
            "postrouting",
            Some(("nat", NF_INET_POST_ROUTING, NF_IP_PRI_NAT_SRC)),
        );
        add_chain(
            &mut b,
            "forward",
            Some(("filter", NF_INET_FORWARD, NF_IP_PRI_FILTER)),
        );

        let jump = Expr::Verdict {
            code: NFT_JUMP,
            chain: Some(CHAIN_PUBLISHED),
        };
        for chain in ["prerouting", "output"] {
            let mut r = fib_daddr_local().to_vec();
            r.push(jump.clone());
            add_rule(
                &mut b,
                chain,
                &r,
                format!("the {chain} jump to published ports"),
            );
        }

        let br = self.bridge.as_str();
        guard::add_input(
            &mut b,
            br,
            self.cluster.unwrap_or(self.subnet),
            &self.control,
        );
        // Before the forward chain's accepts: they would let a job through to a peer.
        guard::add_forward(&mut b, br, &self.control);
        let loopback = Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).unwrap_or(self.subnet);
        // Job-to-job traffic (on this bridge, or across the overlay) needs no NAT and
        // no state: untracked, it skips conntrack (which hosts with br_netfilter loaded
        // also run on bridged frames): a third of the throughput on a fast link.
        // Traffic to this host's own addresses (a published port on its address or the
        // gateway, hairpin included) is still tracked, so DNAT and masquerade work.
        let untracked = self.cluster.unwrap_or(self.subnet);
        add_chain(
            &mut b,
            CHAIN_UNTRACKED,
            Some(("filter", NF_INET_PRE_ROUTING, NF_IP_PRI_RAW)),
        );
        let mut r = ip_in(12, untracked).to_vec();
        r.extend(ip_in(16, untracked));
        r.extend(fib_daddr_local());
        if let Some(Expr::Cmp { op, .. }) = r.last_mut() {
            *op = NFT_CMP_NEQ;
        }
        r.push(Expr::Notrack);
        add_rule(
            &mut b,
            CHAIN_UNTRACKED,
            &r,
            "the job-to-job notrack rule".into(),
        );
        if let Some(cluster) = self.cluster {
            // Jobs talk to jobs on other hosts with their own addresses (the overlay
            // routes them): before the egress masquerade, and accepted on the way in.
            let mut r = ip_in(12, self.subnet).to_vec();
            r.extend(ip_in(16, cluster));
            r.push(verdict(NF_ACCEPT));
            add_rule(
                &mut b,
                "postrouting",
                &r,
                "the overlay no-masquerade rule".into(),
            );
            let mut r = oifname(br, NFT_CMP_EQ).to_vec();
            r.extend(ip_in(12, cluster));
            r.push(verdict(NF_ACCEPT));
            add_rule(
                &mut b,
                "forward",
                &r,
                "the forward rule from the overlay".into(),
            );
        }
        let mut r = ip_in(12, self.subnet).to_vec();
        r.extend(oifname(br, NFT_CMP_NEQ));
        r.push(Expr::Masq);
        add_rule(
            &mut b,
            "postrouting",
            &r,
            "the egress masquerade rule".into(),
        );
        for (src, what) in [(loopback, "loopback"), (self.subnet, "hairpin")] {
            let mut r = oifname(br, NFT_CMP_EQ).to_vec();
            r.extend(ct_has(NFT_CT_STATUS, IPS_DST_NAT));
            r.extend(ip_in(12, src));
            r.push(Expr::Masq);
            add_rule(
                &mut b,
                "postrouting",
                &r,
                format!("the {what} masquerade rule"),
            );
        }

        let mut r = iifname_is(br).to_vec();
        r.push(verdict(NF_ACCEPT));
        add_rule(
            &mut b,
            "forward",
            &r,
            "the forward rule from the bridge".into(),
        );
        for (key, bits) in [
            (NFT_CT_STATE, CT_STATE_ESTABLISHED_RELATED),
            (NFT_CT_STATUS, IPS_DST_NAT),
        ] {
            let mut r = oifname(br, NFT_CMP_EQ).to_vec();
            r.extend(ct_has(key, bits));
            r.push(verdict(NF_ACCEPT));
            add_rule(&mut b, "forward", &r, "a forward rule to the bridge".into());
        }
        let mut r = oifname(br, NFT_CMP_EQ).to_vec();
        r.push(verdict(NF_DROP));
        add_rule(&mut b, "forward", &r, "the forward drop rule".into());

        self.add_published(&mut b);
        b.commit()
    }

    /// Rewrites only the `published` chain, in one transaction. Fails with ENOENT if the
    /// table or chain is gone (the caller then replaces the whole table).
    pub fn replace_published(&self) -> Result<(), NftError> {
        let mut b = Batch::new();
        flush_chain(&mut b, CHAIN_PUBLISHED);
        self.add_published(&mut b);
        b.commit()
    }
}

/// Deletes our table if it exists (teardown and uninstall).
pub fn delete_table() -> Result<(), NftError> {
    let mut b = Batch::new();
    add_table(&mut b);
    del_table(&mut b);
    b.commit()
}

/// Whether our table exists.
pub fn table_exists() -> Result<bool, NftError> {
    match request(NFT_MSG_GETTABLE, false, |m| {
        m.put_str(NFTA_TABLE_NAME, TABLE)
    }) {
        Ok(_) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// How many rules each chain of our table holds, by chain name (for tests and
/// diagnostics).
pub fn rule_counts() -> Result<std::collections::BTreeMap<String, usize>, NftError> {
    let answers = match request(NFT_MSG_GETRULE, true, |m| m.put_str(NFTA_RULE_TABLE, TABLE)) {
        Ok(a) => a,
        Err(e) if e.errno() == Some(libc::ENOENT) => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut counts = std::collections::BTreeMap::new();
    for payload in answers {
        let mut table = "";
        let mut chain = "";
        for (kind, value) in attrs(&payload) {
            match kind {
                NFTA_RULE_TABLE => table = attr_str(value),
                NFTA_RULE_CHAIN => chain = attr_str(value),
                _ => {}
            }
        }
        // The kernel filters the dump by table; this check keeps us honest if it did not.
        if table == TABLE {
            *counts.entry(chain.to_string()).or_insert(0) += 1;
        }
    }
    Ok(counts)
}
