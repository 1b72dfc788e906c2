//! What bounds `write-vs-pg` on this machine, measured in the same job as
//! the pair:
//!
//! - [`HttpsFloor`]: the admin API's HTTPS with nothing behind it. The same
//!   TLS configuration ([`admin::tls_config`]), HTTP/1.1 server settings and
//!   JSON-RPC parsing and answer ([`rpc::parse_request`], [`reply_json`],
//!   [`rpc::response`]) on a current-thread runtime of its own thread (as
//!   `vcodr serve` runs by default), answering each `configuration/put` as
//!   written without a driver, core, replication or storage. The load
//!   generator that drives the pair drives it too: what a write costs
//!   beyond it is the pair's own.
//! - [`handoff`]: one thread waking another that sleeps, and waiting for its
//!   answer (a `std::sync::mpsc` round trip, the hand-off between a
//!   server's runtime and its storage thread), across the machine's CPUs
//!   and pinned to one. A sync-replicated write crosses such hand-offs
//!   between threads and processes several times on its critical path.

use crate::machine::{current_tid, thread_run_s};
use anyhow::Context;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vcodr_core::{Command, Reply};
use vcodr_server::api::admin::{self, ADMIN_BODY_MAX_BYTES};
use vcodr_server::api::json::reply_json;
use vcodr_server::api::rpc::{self, ApiCall, RpcError};

/// How long the floor waits for a request's head (the admin API's default
/// `limits.admin_header_timeout_ms`).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A bare HTTPS JSON-RPC server on its own thread; dropping it stops it.
#[derive(Debug)]
pub struct HttpsFloor {
    tid: u32,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpsFloor {
    /// Serves `addr` with the admin TLS identity `name` of `certs` (the
    /// files `vcodr serve` reads from its `tls_dir`).
    pub fn start(certs: &Path, name: &str, addr: SocketAddr) -> anyhow::Result<HttpsFloor> {
        let tls = admin::tls_config(certs, name)?;
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the HTTPS floor to {addr}"))?;
        listener.set_nonblocking(true)?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (started, tid) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("https-floor".into())
            .spawn(move || {
                let _ = started.send(current_tid());
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime");
                rt.block_on(serve(listener, tls, stopped));
            })?;
        let tid = tid
            .recv()
            .context("the HTTPS floor's thread ended at once")?;
        Ok(HttpsFloor {
            tid,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// CPU seconds its thread has run.
    pub fn cpu_s(&self) -> f64 {
        thread_run_s(self.tid)
    }
}

impl Drop for HttpsFloor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    tls: tokio_rustls::rustls::ServerConfig,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let version = Arc::new(AtomicU64::new(0));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
            _ = &mut stopped => break,
        };
        let (acceptor, version) = (acceptor.clone(), version.clone());
        conns.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let version = version.clone();
                async move {
                    let body = Limited::new(req.into_body(), ADMIN_BODY_MAX_BYTES)
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let answer = serde_json::to_vec(&answer(&body, &version))
                        .expect("a JSON value serializes");
                    hyper::Response::builder()
                        .header(hyper::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from(answer)))
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true);
            let _ = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
        });
    }
    conns.shutdown().await;
}

/// The JSON-RPC answer to `body`: a `configuration/put` is answered as
/// written, at the next version; anything else is refused.
fn answer(body: &[u8], version: &AtomicU64) -> serde_json::Value {
    match rpc::parse_request(body) {
        Ok(rpc::Request {
            id,
            call: ApiCall::Core(Command::Put { key, .. }),
            ..
        }) => {
            let version = version.fetch_add(1, Relaxed) + 1;
            rpc::response(id, Ok(reply_json(&Reply::Written { key, version })))
        }
        Ok(req) => rpc::response(
            req.id,
            Err(RpcError::new(
                rpc::code::INVALID_REQUEST,
                format!(
                    "the HTTPS floor answers configuration/put only, not {}",
                    req.method
                ),
            )),
        ),
        Err(bad) => rpc::response(bad.id, Err(bad.error)),
    }
}

/// One [`handoff`] measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Handoff {
    /// Wall time of one round trip (two hand-offs), µs.
    pub round_trip_us: f64,
    /// CPU each of the two threads ran per round trip, µs (the mean of the two).
    pub cpu_us: f64,
}

/// The lowest CPU this process may run on (to pin a [`handoff`] to).
pub fn first_cpu() -> anyhow::Result<usize> {
    let allowed = rustix::thread::sched_getaffinity(None).context("reading this process's CPUs")?;
    (0..rustix::thread::CpuSet::MAX_CPU)
        .find(|&c| allowed.is_set(c))
        .context("this process may run on no CPU")
}

/// `rounds` round trips between two threads through `std::sync::mpsc`
/// channels of one slot, each thread pinned to `cpu` when given.
pub fn handoff(rounds: u32, cpu: Option<usize>) -> anyhow::Result<Handoff> {
    let pin = move || -> anyhow::Result<()> {
        if let Some(cpu) = cpu {
            let mut set = rustix::thread::CpuSet::new();
            set.set(cpu);
            rustix::thread::sched_setaffinity(None, &set)
                .with_context(|| format!("pinning a thread to CPU {cpu}"))?;
        }
        Ok(())
    };
    let (ping, pinged) = sync_channel::<u32>(1);
    let (pong, ponged) = sync_channel::<u32>(1);
    let echo = std::thread::spawn(move || -> anyhow::Result<f64> {
        pin()?;
        let t0 = thread_run_s(current_tid());
        while let Ok(i) = pinged.recv() {
            if pong.send(i).is_err() {
                break;
            }
        }
        Ok(thread_run_s(current_tid()) - t0)
    });
    let timed = std::thread::spawn(move || -> anyhow::Result<(Duration, f64)> {
        pin()?;
        // The echo thread is asleep on its channel before the clock starts.
        ping.send(0)?;
        ponged.recv()?;
        let (t0, c0) = (Instant::now(), thread_run_s(current_tid()));
        for i in 1..=rounds {
            ping.send(i)?;
            ponged.recv()?;
        }
        Ok((t0.elapsed(), thread_run_s(current_tid()) - c0))
    });
    let (took, timed_cpu) = timed.join().expect("the timing thread panicked")?;
    let echo_cpu = echo.join().expect("the echo thread panicked")?;
    let n = f64::from(rounds.max(1));
    Ok(Handoff {
        round_trip_us: took.as_secs_f64() * 1e6 / n,
        cpu_us: (timed_cpu + echo_cpu) / 2.0 * 1e6 / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_answers_a_put_as_written_and_refuses_the_rest() {
        let v = AtomicU64::new(41);
        let put = br#"{"jsonrpc":"2.0","id":7,"method":"configuration/put","params":{"key":"k","value":"x"}}"#;
        assert_eq!(
            answer(put, &v),
            serde_json::json!({"jsonrpc": "2.0", "id": 7, "result": {"key": "k", "version": 42}})
        );
        let get = br#"{"jsonrpc":"2.0","id":8,"method":"configuration/get","params":{"key":"k"}}"#;
        assert_eq!(
            answer(get, &v)["error"]["message"],
            "the HTTPS floor answers configuration/put only, not configuration/get"
        );
        assert_eq!(answer(b"{", &v)["error"]["code"], rpc::code::PARSE_ERROR);
    }

    #[test]
    fn a_handoff_is_timed_across_cpus_and_on_one() {
        for cpu in [None, Some(first_cpu().unwrap())] {
            let h = handoff(200, cpu).unwrap();
            assert!(
                h.round_trip_us > 0.0 && h.cpu_us >= 0.0 && h.cpu_us.is_finite(),
                "{cpu:?}: {h:?}"
            );
        }
    }
}
