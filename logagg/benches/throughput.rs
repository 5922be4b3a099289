//! Lines per second through one aggregator (shipped over TCP, each followed by a
//! reader over HTTP) and the time from a line's write to the follower seeing it,
//! against the floor: the same bytes written to a plain TCP socket and read back.
//! Medians of several rounds, the floor and the aggregator interleaved in each.
//! `cargo bench -p flynn-logagg --bench throughput`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use logagg::{Aggregator, LogLine};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const LINES: u64 = 200_000;
const ROUNDS: usize = 5;

fn line(seq: u64) -> LogLine {
    LogLine {
        app: "bench".into(),
        process_type: "web".into(),
        job_id: "job-0123456789abcdef".into(),
        host_id: "host-1".into(),
        stream: "stdout".into(),
        time: chrono::Utc::now(),
        seq,
        msg: format!("GET /index.html 200 1234 bytes in 0.42 ms request {seq}"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Ships LINES lines and waits until a follower has read the last one: lines/s.
async fn through_aggregator(round: u64) -> f64 {
    let agg = Aggregator::new(LINES as usize, None);
    let syslog = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (s, h) = (syslog.local_addr().unwrap(), http.local_addr().unwrap());
    tokio::spawn(agg.clone().serve_syslog(syslog));
    tokio::spawn(agg.clone().serve_http(http));
    let mut follow = TcpStream::connect(h).await.unwrap();
    follow
        .write_all(b"GET /logs/bench?lines=0&follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut r = BufReader::new(follow);
    let mut l = String::new();
    while l != "\r\n" {
        l.clear();
        r.read_line(&mut l).await.unwrap();
    }
    let frames: Vec<u8> = (1..=LINES)
        .flat_map(|i| line(i + round * LINES).frame())
        .collect();
    let start = Instant::now();
    let mut ship = TcpStream::connect(s).await.unwrap();
    ship.write_all(&frames).await.unwrap();
    let last = format!("request {}\"", LINES + round * LINES);
    loop {
        l.clear();
        r.read_line(&mut l).await.unwrap();
        if l.contains(&last) {
            break;
        }
    }
    LINES as f64 / start.elapsed().as_secs_f64()
}

/// The floor's bytes are sent this many times: once takes a few milliseconds, too
/// short to measure on a shared machine (one round's floor varied threefold).
const FLOOR_REPEAT: u64 = 20;

/// The floor: the same bytes through a TCP socket, read to the end.
async fn floor() -> f64 {
    let frames: Vec<u8> = (1..=LINES).flat_map(|i| line(i).frame()).collect();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let n = frames.len() * FLOOR_REPEAT as usize;
    let reader = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < n {
            got += s.read(&mut buf).await.unwrap();
        }
    });
    let start = Instant::now();
    let mut w = TcpStream::connect(a).await.unwrap();
    for _ in 0..FLOOR_REPEAT {
        w.write_all(&frames).await.unwrap();
    }
    reader.await.unwrap();
    (LINES * FLOOR_REPEAT) as f64 / start.elapsed().as_secs_f64()
}

/// One line at a time: write → the follower has it (ms).
async fn latency() -> f64 {
    let agg = Aggregator::new(1000, None);
    let syslog = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (s, h) = (syslog.local_addr().unwrap(), http.local_addr().unwrap());
    tokio::spawn(agg.clone().serve_syslog(syslog));
    tokio::spawn(agg.clone().serve_http(http));
    let mut follow = TcpStream::connect(h).await.unwrap();
    follow
        .write_all(b"GET /logs/bench?lines=0&follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut r = BufReader::new(follow);
    let mut l = String::new();
    while l != "\r\n" {
        l.clear();
        r.read_line(&mut l).await.unwrap();
    }
    let mut ship = TcpStream::connect(s).await.unwrap();
    let mut samples = Vec::new();
    for i in 1..=200u64 {
        let start = Instant::now();
        ship.write_all(&line(i).frame()).await.unwrap();
        let want = format!("request {i}\"");
        loop {
            l.clear();
            r.read_line(&mut l).await.unwrap();
            if l.contains(&want) {
                break;
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    median(samples)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut agg, mut raw, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // The floor and the aggregator back to back in each round, so a
            // round's ratio compares the two under the same load (the machine
            // is shared): the ratio reported is the median of the rounds'.
            let f = floor().await;
            let a = through_aggregator(round as u64).await;
            println!("round {}: aggregator {a:.0} lines/s, TCP floor {f:.0} lines/s, ratio {:.3}", round + 1, a / f);
            raw.push(f);
            agg.push(a);
            ratios.push(a / f);
        }
        let (a, f, r) = (median(agg), median(raw), median(ratios));
        println!(
            "aggregator: {a:.0} lines/s shipped and followed (median of {ROUNDS} rounds); TCP floor: {f:.0} lines/s; ratio {r:.3} (median of the rounds' ratios)"
        );
        println!("write → follower: median {:.2} ms (target < 100 ms)", latency().await);
    });
}
