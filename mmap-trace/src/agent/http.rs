//! `--metrics-addr`: `GET /metrics` in the OpenMetrics text format (which Prometheus
//! reads), served by one thread from the registry the reader publishes into. Bound
//! before the probes load, so an address in use is an error before anything starts, and
//! a scrape while the agent starts or stops gets the registry as it is then.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::Arc,
    time::Duration,
};

use anyhow::{Result, anyhow};
use prometheus_client::registry::Registry;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr`; the error is one line naming the address.
pub fn bind(addr: &str) -> Result<TcpListener> {
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|e| anyhow!("--metrics-addr {addr}: not an address to listen on ({e})"))?
        .collect();
    TcpListener::bind(&addrs[..]).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => "the address is in use".to_owned(),
            std::io::ErrorKind::AddrNotAvailable => {
                "no interface of this machine has that address".to_owned()
            }
            _ => e.to_string(),
        };
        anyhow!("--metrics-addr {addr}: cannot listen: {why}")
    })
}

/// Serves until the process exits.
pub fn serve(listener: TcpListener, registry: Arc<Registry>) {
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                // One slow or broken client must not stop the others for long.
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                let _ = respond(stream, &registry);
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| eprintln!("mmap-trace: error: cannot start the metrics server: {e}"));
}

fn respond(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 16 * 1024 {
            return reply(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET" | b"HEAD", b"/metrics") => {
            let mut body = String::new();
            prometheus_client::encoding::text::encode(&mut body, registry)
                .map_err(std::io::Error::other)?;
            if method == b"HEAD" {
                body.clear();
            }
            reply(&mut stream, "200 OK", CONTENT_TYPE, &body)
        }
        (b"GET", b"/") => reply(
            &mut stream,
            "200 OK",
            "text/plain; charset=utf-8",
            "mmap-trace agent: metrics at /metrics\n",
        ),
        (b"GET" | b"HEAD", _) => reply(&mut stream, "404 Not Found", "text/plain", "not found\n"),
        _ => reply(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n",
        ),
    }
}

fn reply(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    // One buffer, one write: the process may exit (SIGTERM) at any moment, and a scraper
    // must then get the whole answer or none, never a head without its body.
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_and_refuses_the_rest_in_one_line() {
        let listener = bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = super::super::metrics::Metrics::new(false);
        serve(listener, metrics.registry.clone());
        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(CONTENT_TYPE) && ok.trim_end().ends_with("# EOF"),
            "{ok}"
        );
        assert!(get(addr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        let in_use = bind(&addr.to_string()).unwrap_err().to_string();
        assert!(in_use.contains("the address is in use"), "{in_use}");
        assert!(
            bind("nonsense")
                .unwrap_err()
                .to_string()
                .contains("not an address")
        );
    }
}
