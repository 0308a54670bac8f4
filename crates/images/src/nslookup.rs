//! `nslookup` as busybox 1.28 has it, which the course's DNS lab shows
//! (`kubectl exec -ti busybox1 -- nslookup test-service.default`).
//!
//! Busybox 1.29 and later resolve by themselves and apply the search path
//! only to names without a dot, so `test-service.default` fails with them
//! against any Kubernetes DNS. Like 1.28, this one resolves through the C
//! library (which honours `search` and `ndots` in `/etc/resolv.conf`) and
//! names each address by a reverse (PTR) query to the first nameserver.
//! The process runtime puts it on the PATH of containers of the busybox
//! image.

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::Duration;

/// The first nameserver of `/etc/resolv.conf`.
fn nameserver() -> Option<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .ok()?
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|a| a.trim().parse().ok())
}

/// The PTR name of `ip`, asked of `server`.
fn reverse(server: IpAddr, ip: IpAddr) -> Option<String> {
    let arpa = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(_) => return None,
    };
    let mut msg = Message::query();
    msg.metadata.id = rand_id();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(&arpa).ok()?, RecordType::PTR));
    let bytes = msg.to_vec().ok()?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .ok()?;
    let sock = UdpSocket::bind(bind).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    sock.send_to(&bytes, (server, 53)).ok()?;
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let answer = Message::from_vec(&buf[..n]).ok()?;
    answer.answers.iter().find_map(|r| match &r.data {
        RData::PTR(p) => Some(p.0.to_ascii().trim_end_matches('.').to_owned()),
        _ => None,
    })
}

fn rand_id() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (t ^ std::process::id()) as u16
}

fn line(n: usize, ip: IpAddr, name: Option<String>) -> String {
    match name {
        Some(name) => format!("Address {n}: {ip} {name}"),
        None => format!("Address {n}: {ip}"),
    }
}

/// `nslookup HOST`: prints the server and the addresses, exits 1 when the
/// name does not resolve.
pub fn run(args: &[String]) -> anyhow::Result<i32> {
    let Some(host) = args.iter().find(|a| !a.starts_with('-')) else {
        eprintln!("BusyBox v1.28 (mast) multi-call binary.\n\nUsage: nslookup [HOST] [SERVER]\n\nQuery the nameserver for the IP address of the given HOST");
        return Ok(1);
    };
    let server = nameserver();
    match server {
        Some(s) => {
            println!("Server:    {s}");
            println!("{}\n", line(1, s, reverse(s, s)));
        }
        None => println!("Server:    (none)\n"),
    }
    let mut addrs: Vec<IpAddr> = match (host.as_str(), 0).to_socket_addrs() {
        Ok(a) => a.map(|a| a.ip()).collect(),
        Err(_) => {
            eprintln!("nslookup: can't resolve '{host}'");
            return Ok(1);
        }
    };
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|a| seen.insert(*a));
    println!("Name:      {host}");
    for (i, ip) in addrs.iter().enumerate() {
        let name = server.and_then(|s| reverse(s, *ip));
        println!("{}", line(i + 1, *ip, name));
    }
    Ok(0)
}
