//! The writer's bulk lane: a host that does not read holds back log senders at the byte budget,
//! and every line still arrives whole and in order once the host reads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use executor_plugin::outlet::outlet;
use executor_plugin::server::{serve_with_outlet, ServerConfig};
use jsonrpsee::RpcModule;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const BUDGET: usize = 256 * 1024;
const LINE: usize = 100 * 1024;
const LINES: usize = 64;

fn bulk_line(i: usize) -> Vec<u8> {
    let mut line = format!("{{\"n\":{i},\"pad\":\"").into_bytes();
    line.resize(LINE - 3, b'a' + (i % 26) as u8);
    line.extend_from_slice(b"\"}\n");
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_read_holds_senders_at_the_byte_budget() {
    let mut module = RpcModule::new(());
    module
        .register_method("ping", |_, _, _| "pong")
        .expect("register");
    let (plugin_in, mut host_out) = tokio::io::duplex(4096);
    // A small pipe that nobody reads for a while.
    let (plugin_out, host_in) = tokio::io::duplex(16 * 1024);
    let (outlet, queue) = outlet(BUDGET);
    let server = tokio::spawn(serve_with_outlet(
        module.into(),
        plugin_in,
        plugin_out,
        ServerConfig::default(),
        Some(queue),
    ));

    let sent = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (outlet, sent) = (outlet.clone(), sent.clone());
        tokio::spawn(async move {
            for i in 0..LINES {
                outlet.send(bulk_line(i)).await.expect("writer alive");
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued = outlet.queued_bytes();
    let sent_while_blocked = sent.load(Ordering::SeqCst);
    assert!(
        queued <= BUDGET,
        "{queued} bytes queued over a {BUDGET} budget"
    );
    // What the budget holds, plus the line the writer is stuck writing into the pipe.
    assert!(
        sent_while_blocked <= BUDGET / LINE + 1,
        "{sent_while_blocked} lines accepted while the host read nothing"
    );
    assert!(!producer.is_finished());

    // A call made meanwhile is still answered; then everything arrives once the host reads.
    host_out
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"ping\"}\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(host_in).lines();
    let mut next_bulk = 0;
    let mut answered = false;
    while next_bulk < LINES || !answered {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("output keeps coming")
            .unwrap()
            .expect("line");
        if line.contains("\"id\":7") {
            assert!(line.contains("pong"), "{line}");
            answered = true;
            continue;
        }
        let want = bulk_line(next_bulk);
        assert_eq!(
            line.as_bytes(),
            &want[..want.len() - 1],
            "bulk line {next_bulk}"
        );
        next_bulk += 1;
    }
    producer.await.unwrap();
    // The writer gives back a line's bytes once its write returns, which can come after the
    // host has read the line: wait for the count rather than race it.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while outlet.queued_bytes() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "{} bytes still queued",
        outlet.queued_bytes()
    );
    drop(host_out);
    server.await.unwrap().unwrap();
}
