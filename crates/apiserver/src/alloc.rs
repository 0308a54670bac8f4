//! ClusterIP and NodePort allocation for Services, with conflict detection.
//!
//! The allocated sets live in memory and are rebuilt from the stored Services
//! at start, so the store stays the only source of truth.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

/// Why an address or port could not be given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AllocError {
    #[error("failed to allocate IP {0}: provided IP is already allocated")]
    IpTaken(String),
    #[error("failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {cidr}")]
    IpOutOfRange { ip: String, cidr: String },
    #[error("failed to allocate IP {0}: not a valid IPv4 address")]
    IpInvalid(String),
    #[error("range is full: no ClusterIP is left in {0}")]
    IpsExhausted(String),
    #[error("provided port is already allocated")]
    PortTaken(u16),
    #[error("provided port is not in the valid range. The range of valid ports is {lo}-{hi}")]
    PortOutOfRange { port: i64, lo: u16, hi: u16 },
    #[error("range is full: no NodePort is left in {lo}-{hi}")]
    PortsExhausted { lo: u16, hi: u16 },
}

/// The Service IP and NodePort allocators.
#[derive(Debug)]
pub struct Allocators {
    base: u32,
    size: u32,
    cidr: String,
    ips: Mutex<BTreeSet<u32>>,
    ports: (u16, u16),
    used_ports: Mutex<BTreeSet<u16>>,
}

impl Allocators {
    pub fn new(cidr: &str, ports: (u16, u16)) -> Result<Self, String> {
        let (addr, bits) = cidr
            .split_once('/')
            .ok_or_else(|| format!("service CIDR {cidr:?} must look like 10.43.0.0/16"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("service CIDR {cidr:?} has an invalid address"))?;
        let bits: u32 = bits
            .parse()
            .ok()
            .filter(|b| (8..=30).contains(b))
            .ok_or_else(|| format!("service CIDR {cidr:?} needs a prefix length from 8 to 30"))?;
        let size = 1u32 << (32 - bits);
        let base = u32::from(addr) & !(size - 1);
        Ok(Self {
            base,
            size,
            cidr: cidr.into(),
            ips: Mutex::new(BTreeSet::new()),
            ports,
            used_ports: Mutex::new(BTreeSet::new()),
        })
    }

    /// The first usable address: the `kubernetes` Service's ClusterIP.
    pub fn first_ip(&self) -> String {
        Ipv4Addr::from(self.base + 1).to_string()
    }

    fn offset(&self, ip: &str) -> Result<u32, AllocError> {
        let a: Ipv4Addr = ip.parse().map_err(|_| AllocError::IpInvalid(ip.into()))?;
        let a = u32::from(a);
        if a <= self.base || a >= self.base + self.size - 1 {
            return Err(AllocError::IpOutOfRange {
                ip: ip.into(),
                cidr: self.cidr.clone(),
            });
        }
        Ok(a - self.base)
    }

    /// Reserve `ip` exactly, or fail if it is taken or out of range.
    pub fn claim_ip(&self, ip: &str) -> Result<(), AllocError> {
        let off = self.offset(ip)?;
        let mut ips = self.ips.lock().unwrap_or_else(|e| e.into_inner());
        if !ips.insert(off) {
            return Err(AllocError::IpTaken(ip.into()));
        }
        Ok(())
    }

    /// Reserve any free IP. Picks at random, as Kubernetes does, so deleted
    /// addresses are not reused at once.
    pub fn next_ip(&self) -> Result<String, AllocError> {
        use rand::Rng;
        let mut ips = self.ips.lock().unwrap_or_else(|e| e.into_inner());
        let usable = self.size - 2;
        if ips.len() as u32 >= usable {
            return Err(AllocError::IpsExhausted(self.cidr.clone()));
        }
        let start = rand::rng().random_range(0..usable);
        for i in 0..usable {
            let off = 1 + (start + i) % usable;
            if off == 1 {
                continue; // reserved for the `kubernetes` Service
            }
            if ips.insert(off) {
                return Ok(Ipv4Addr::from(self.base + off).to_string());
            }
        }
        Err(AllocError::IpsExhausted(self.cidr.clone()))
    }

    pub fn release_ip(&self, ip: &str) {
        if let Ok(off) = self.offset(ip) {
            self.ips
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&off);
        }
    }

    /// Reserve `port` exactly.
    pub fn claim_port(&self, port: i64) -> Result<u16, AllocError> {
        let (lo, hi) = self.ports;
        if port < lo as i64 || port > hi as i64 {
            return Err(AllocError::PortOutOfRange { port, lo, hi });
        }
        let p = port as u16;
        if !self
            .used_ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p)
        {
            return Err(AllocError::PortTaken(p));
        }
        Ok(p)
    }

    /// Reserve any free NodePort.
    pub fn next_port(&self) -> Result<u16, AllocError> {
        use rand::Rng;
        let (lo, hi) = self.ports;
        let span = (hi - lo) as u32 + 1;
        let mut used = self.used_ports.lock().unwrap_or_else(|e| e.into_inner());
        let start = rand::rng().random_range(0..span);
        for i in 0..span {
            let p = lo + ((start + i) % span) as u16;
            if used.insert(p) {
                return Ok(p);
            }
        }
        Err(AllocError::PortsExhausted { lo, hi })
    }

    pub fn release_port(&self, port: i64) {
        if let Ok(p) = u16::try_from(port) {
            self.used_ports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_are_unique_and_in_range() {
        let a = Allocators::new("10.43.0.0/29", (30000, 30002)).unwrap();
        assert_eq!(a.first_ip(), "10.43.0.1");
        a.claim_ip("10.43.0.1").unwrap();
        let mut got = vec![];
        while let Ok(ip) = a.next_ip() {
            got.push(ip);
        }
        assert_eq!(got.len(), 5);
        assert!(matches!(
            a.claim_ip("10.43.0.3"),
            Err(AllocError::IpTaken(_))
        ));
        assert!(matches!(
            a.claim_ip("10.44.0.3"),
            Err(AllocError::IpOutOfRange { .. })
        ));
        a.release_ip("10.43.0.3");
        a.claim_ip("10.43.0.3").unwrap();
    }

    #[test]
    fn node_ports_stay_in_range() {
        let a = Allocators::new("10.43.0.0/16", (30000, 30002)).unwrap();
        assert_eq!(a.claim_port(30001).unwrap(), 30001);
        assert!(matches!(a.claim_port(30001), Err(AllocError::PortTaken(_))));
        assert!(matches!(
            a.claim_port(80),
            Err(AllocError::PortOutOfRange { .. })
        ));
        let x = a.next_port().unwrap();
        let y = a.next_port().unwrap();
        assert_ne!(x, y);
        assert!(a.next_port().is_err());
    }
}
