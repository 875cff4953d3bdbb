//! A real Redis (Debian's `redis-server`) for the tests that share state
//! between upstream replicas: budgets, provider quota readings.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::stack::free_port;

/// A Redis server on a free loopback port, stopped on drop.
pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Redis { port, child }
    }

    pub fn set(&self, key: &str, value: i64) {
        let status = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "SET", key, &value.to_string()])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn get(&self, key: &str) -> i64 {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "GET", key])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    }

    /// `HGET key field` as text ("" when absent).
    pub fn hget(&self, key: &str, field: &str) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "HGET", key, field])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
