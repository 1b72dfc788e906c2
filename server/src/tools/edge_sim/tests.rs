//! Tests of the edge simulator: the RTT histogram and the pause control.

mod histogram {
    use super::super::RttHistogram;
    use std::time::Duration;

    #[test]
    fn quantiles_come_from_narrow_buckets() {
        let h = RttHistogram::default();
        for us in 1..=1000u64 {
            h.observe(Duration::from_micros(us));
        }
        // Each answer is the top of the bucket holding the exact quantile.
        assert_eq!(h.quantile_us(0.5), 511);
        assert_eq!(h.quantile_us(0.99), 1023);
        assert_eq!(h.quantile_us(0.0), 1);
        for us in [
            1u64,
            3,
            4,
            5,
            7,
            8,
            9,
            15,
            16,
            17,
            1_000,
            19_999,
            20_000,
            1 << 38,
        ] {
            let b = RttHistogram::bucket(us);
            assert!(RttHistogram::upper_us(b) >= us, "{us}");
            assert!(b == 0 || RttHistogram::upper_us(b - 1) < us, "{us}");
        }
        h.reset();
        assert_eq!(h.count(), 0);
    }
}

mod control {
    use super::super::*;

    /// Two edges whose servers never answer: they generate and cache
    /// samples; `--control` reports them per edge, pauses and resumes.
    #[tokio::test]
    async fn control_commands_report_pause_and_resume() {
        let ca = CertificateAuthority::new().unwrap();
        // Nothing listens on the discard ports: every connect fails.
        let settings = SimSettings {
            servers: ["127.0.0.1:9".into(), "127.0.0.2:9".into()],
            count: 2,
            gateway_every: 0,
            heartbeat_interval_ms: 100,
            sample_interval_ms: 10,
            ..SimSettings::default()
        };
        let sim = EdgeSim::start(&ca, settings).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while sim.edges().iter().any(|e| e.generated < 3) {
            assert!(Instant::now() < deadline, "no samples: {:?}", sim.edges());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let paused = control(&sim, "pause").await.unwrap();
        assert_eq!(paused, serde_json::json!({"paused": true}));
        let report = control(&sim, " report\n").await.unwrap();
        let edges: Vec<EdgeReport> = serde_json::from_value(report["edges"].clone()).unwrap();
        assert_eq!(edges.len(), 2);
        for (i, e) in edges.iter().enumerate() {
            assert_eq!(e.client_id, format!("edge-{}", i + 1));
            assert_eq!(e.following, None);
            // Nothing acknowledged: every sample generated is still cached.
            assert_eq!((e.acked_seq, e.cached, e.dropped), (0, e.generated, 0));
            assert!(e.paused);
        }
        assert_eq!(report["summary"]["edges"], 2);
        // Paused edges generate nothing more.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sim.edges(), edges);
        assert_eq!(
            control(&sim, "resume").await.unwrap(),
            serde_json::json!({"resumed": true})
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while sim.edges()[0].generated == edges[0].generated {
            assert!(Instant::now() < deadline, "resume generated nothing");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let e = control(&sim, "jump").await.unwrap();
        assert!(e["error"]
            .as_str()
            .unwrap()
            .contains("unknown command \"jump\""));
        assert!(control(&sim, "stop").await.is_none());
        sim.stop().await;
    }
}
