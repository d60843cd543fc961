use crate::process::{free_port, scratch, tool, Proc};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

/// A real `redis-server` on a free port, without persistence.
pub struct RedisServer {
    port: u16,
    proc: Proc,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    fn start_on(port: u16) -> RedisServer {
        let bin = tool("redis-server", "REDIS_SERVER");
        let dir = scratch("redis");
        let mut cmd = Command::new(bin);
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(&dir);
        let mut proc = Proc::spawn(cmd, dir.join("redis.log"));
        proc.wait_until("redis-server", Duration::from_secs(10), || ping(port));
        RedisServer { port, proc }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL: the server vanishes as in a crash.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts again on the same port (empty: nothing was persisted).
    pub fn restart(&mut self) {
        self.proc.kill();
        let fresh = RedisServer::start_on(self.port);
        *self = fresh;
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
