//! What bounds `write-vs-pg` on this machine, measured in the same job as
//! the pair:
//!
//! - [`HttpsFloor`]: the admin API's HTTPS with nothing behind it. The same
//!   TLS configuration ([`admin::tls_config`]), HTTP/1.1 server settings
//!   ([`admin::http1`] with the default header timeout) and
//!   JSON-RPC parsing and answer ([`rpc::parse_request`], [`reply_json`],
//!   [`rpc::response`]) on a current-thread runtime of its own thread (as
//!   `vcodr serve` runs by default), answering each `configuration/put` as
//!   written. Left out of the admin path, each small: the token check, the
//!   request permit and the timeouts around it and the body, the
//!   connection's activity tracking and idle check, metrics and logging;
//!   and of course the driver, the core, replication and storage. The load
//!   generator that drives the pair drives it too, at full speed and paced
//!   to the pair's rate (a wake-up per call costs more than a busy thread's
//!   call).
//! - [`handoff`]: one thread waking another asleep on a `std::sync::mpsc`
//!   channel and waiting for its answer (a futex wake, as a server's
//!   runtime wakes its storage thread; the way back, and the sockets, wake
//!   a runtime parked in `epoll_wait` instead), with the two threads pinned
//!   to two CPUs and to one.

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
use vcodr_server::api::admin::{self, ACCEPT_FAILURE_PAUSE, ADMIN_BODY_MAX_BYTES};
use vcodr_server::api::json::reply_json;
use vcodr_server::api::rpc::{self, ApiCall, RpcError};
use vcodr_server::config::AdminLimits;

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
        let (started, ready) = sync_channel::<Result<u32, String>>(1);
        let thread = std::thread::Builder::new()
            .name("https-floor".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return drop(started.send(Err(format!("its runtime: {e}")))),
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => return drop(started.send(Err(format!("its listener: {e}")))),
                    };
                    let _ = started.send(Ok(current_tid()));
                    serve(listener, tls, stopped).await
                });
            })?;
        let tid = match ready.recv() {
            Ok(Ok(tid)) => tid,
            Ok(Err(why)) => anyhow::bail!("the HTTPS floor did not start: {why}"),
            Err(_) => anyhow::bail!("the HTTPS floor's thread ended before it served"),
        };
        Ok(HttpsFloor {
            tid,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// CPU seconds its thread has run (NaN if they cannot be read: the
    /// table then says so rather than show a floor that cost nothing).
    pub fn cpu_s(&self) -> f64 {
        thread_run_s(self.tid).unwrap_or(f64::NAN)
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
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::rustls::ServerConfig,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let header_timeout = AdminLimits::default().header_timeout;
    let version = Arc::new(AtomicU64::new(0));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                // As the admin listener: a persistent failure is no busy loop.
                Err(_) => {
                    tokio::time::sleep(ACCEPT_FAILURE_PAUSE).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
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
                    let Ok(body) = Limited::new(req.into_body(), ADMIN_BODY_MAX_BYTES)
                        .collect()
                        .await
                    else {
                        return hyper::Response::builder()
                            .status(hyper::StatusCode::PAYLOAD_TOO_LARGE)
                            .body(Full::new(Bytes::new()));
                    };
                    let answer = serde_json::to_vec(&answer(&body.to_bytes(), &version))
                        .expect("a JSON value serializes");
                    hyper::Response::builder()
                        .header(hyper::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from(answer)))
                }
            });
            let _ = admin::http1(header_timeout)
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

/// The CPUs this process may run on, lowest first (never empty).
pub fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    let allowed =
        rustix::thread::sched_getaffinity(None).context("reading the CPUs this process may use")?;
    let cpus: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| allowed.is_set(c))
        .collect();
    if cpus.is_empty() {
        anyhow::bail!("this process may run on no CPU");
    }
    Ok(cpus)
}

/// `rounds` round trips between two threads through `std::sync::mpsc`
/// channels of one slot, the timing thread pinned to `cpus.0` and the
/// echoing one to `cpus.1` (the same CPU, or two).
pub fn handoff(rounds: u32, cpus: (usize, usize)) -> anyhow::Result<Handoff> {
    let pin = |cpu: usize| -> anyhow::Result<()> {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set)
            .with_context(|| format!("pinning a thread to CPU {cpu}"))
    };
    let run_s = || thread_run_s(current_tid()).context("reading this thread's run time");
    let (ping, pinged) = sync_channel::<u32>(1);
    let (pong, ponged) = sync_channel::<u32>(1);
    let echo = std::thread::spawn(move || -> anyhow::Result<f64> {
        pin(cpus.1)?;
        let t0 = run_s()?;
        while let Ok(i) = pinged.recv() {
            if pong.send(i).is_err() {
                break;
            }
        }
        Ok(run_s()? - t0)
    });
    let timed = std::thread::spawn(move || -> anyhow::Result<(Duration, f64)> {
        pin(cpus.0)?;
        // One round before the clock starts: both threads are running and
        // pinned (the echo thread answered from its CPU).
        ping.send(0)?;
        ponged.recv()?;
        let (t0, c0) = (Instant::now(), run_s()?);
        for i in 1..=rounds {
            ping.send(i)?;
            ponged.recv()?;
        }
        Ok((t0.elapsed(), run_s()? - c0))
    });
    let timed = timed.join().expect("the timing thread panicked");
    let echo = echo.join().expect("the echo thread panicked");
    // A failed echo thread (it could not pin) closes the channels: its error says why.
    let echo_cpu = echo?;
    let (took, timed_cpu) = timed?;
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
    fn a_handoff_is_timed_on_one_cpu_and_across_two() {
        let cpus = allowed_cpus().unwrap();
        let (first, last) = (cpus[0], *cpus.last().unwrap());
        for pair in [(first, first), (first, last)] {
            let h = handoff(200, pair).unwrap();
            assert!(
                h.round_trip_us > 0.0 && h.cpu_us > 0.0 && h.cpu_us.is_finite(),
                "{pair:?}: {h:?}"
            );
        }
    }

    #[test]
    fn a_handoff_on_a_cpu_it_may_not_use_says_which() {
        let e = handoff(10, (0, rustix::thread::CpuSet::MAX_CPU - 1))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "pinning a thread to CPU {}",
                rustix::thread::CpuSet::MAX_CPU - 1
            )
        );
    }
}
