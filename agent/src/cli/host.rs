//! `flynn-host status` and `flynn-host daemon-log`.

use anyhow::Result;
use hyper::Method;

use crate::client::Client;
use crate::model::HostStatus;

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

pub async fn daemon_log(client: &Client, tail: usize) -> Result<i32> {
    use http_body_util::BodyExt;
    let response = client
        .send_json(Method::GET, &format!("/host/log?tail={tail}"), None::<&()>)
        .await?;
    let text = response.into_body().collect().await?.to_bytes();
    use std::io::Write;
    std::io::stdout().write_all(&text)?;
    Ok(0)
}

pub async fn status(client: &Client, json: bool) -> Result<i32> {
    let s: HostStatus = client
        .call(Method::GET, "/host/status", None::<&()>)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(0);
    }
    let open = match s.promised.unlimited_memory_jobs {
        0 => String::new(),
        n => format!(" (+{n} job(s) without a memory limit)"),
    };
    println!("Host:      {}", s.id);
    println!("Version:   {}", s.version);
    println!("Kernel:    {}", s.kernel);
    println!("CPUs:      {}", s.cpus);
    println!(
        "Memory:    {} total, {} free",
        gib(s.memory.total),
        gib(s.memory.free)
    );
    println!(
        "Disk:      {} total, {} free (state dir)",
        gib(s.disk.total),
        gib(s.disk.free)
    );
    println!("cgroups:   {}", s.cgroup);
    println!(
        "Jobs:      {} running, {} total",
        s.jobs.running, s.jobs.total
    );
    println!(
        "Promised:  memory {}{open}, cpus {}, pids {}",
        mib(s.promised.memory),
        s.promised.cpus,
        s.promised.pids
    );
    println!("Started:   {}", s.started_at.to_rfc3339());
    if let Some(c) = &s.cluster {
        println!(
            "Cluster:   {} via etcd {} ({})",
            c.address,
            c.etcd.join(","),
            if c.connected {
                "connected"
            } else {
                "not connected"
            }
        );
        if let Some(o) = &c.overlay {
            println!(
                "Overlay:   subnet {} of {}, {} vni {} port {}, mtu {}, {} peer(s)",
                o.subnet,
                o.network,
                o.device,
                o.vni,
                o.port,
                o.mtu,
                o.peers.len()
            );
        }
        if let Some(d) = &c.dns {
            println!("DNS:       {d} (*.discoverd)");
        }
        if let Some(e) = &c.last_error {
            println!("Last error: {e}");
        }
    }
    Ok(0)
}
