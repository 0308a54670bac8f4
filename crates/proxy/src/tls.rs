//! The TLS inspector: reads the server name (SNI) from a connection's
//! ClientHello without consuming it, so a filter chain can be chosen by
//! `server_names` and the bytes still reach the upstream unchanged.
//!
//! Written by hand: TLS libraries parse a ClientHello only as part of a
//! handshake they then own, and a peek needs no more than this walk over
//! length-prefixed fields (RFC 8446 §4.1.2, RFC 6066 §3).

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq)]
pub enum Hello {
    /// Not a TLS handshake.
    NotTls,
    /// TLS, with this server name if the client sent one.
    Tls(Option<String>),
    /// A TLS record whose ClientHello has not fully arrived.
    NeedMore,
}

fn u16_at(b: &[u8], i: usize) -> Option<usize> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize)
}

/// Parse what has arrived so far.
pub fn client_hello(b: &[u8]) -> Hello {
    match b.first() {
        None => return Hello::NeedMore,
        Some(0x16) => {}
        Some(_) => return Hello::NotTls,
    }
    let Some(record_len) = u16_at(b, 3) else {
        return Hello::NeedMore;
    };
    // A plaintext record holds at most 2^14 bytes (RFC 8446 §5.1).
    if record_len > 16 * 1024 {
        return Hello::NotTls;
    }
    if b.len() < 5 + record_len {
        return Hello::NeedMore;
    }
    let rec = &b[5..5 + record_len];
    if rec.first() != Some(&0x01) {
        return Hello::NotTls;
    }
    Hello::Tls(sni(rec).flatten())
}

/// The server name in a handshake message (type, 3-byte length, body);
/// `None` if it is malformed or cut off by the record.
fn sni(h: &[u8]) -> Option<Option<String>> {
    // type(1) length(3) version(2) random(32)
    let mut i = 4 + 2 + 32;
    i += 1 + *h.get(i)? as usize; // session id
    i += 2 + u16_at(h, i)?; // cipher suites
    i += 1 + *h.get(i)? as usize; // compression methods
    let Some(ext_len) = u16_at(h, i) else {
        return Some(None); // no extensions
    };
    i += 2;
    let end = (i + ext_len).min(h.len());
    while i + 4 <= end {
        let (ty, len) = (u16_at(h, i)?, u16_at(h, i + 2)?);
        let data = h.get(i + 4..i + 4 + len)?;
        if ty == 0 {
            // server_name_list: length(2), then (type(1), length(2), name)*
            let mut j = 2;
            while j + 3 <= data.len() {
                let n = u16_at(data, j + 1)?;
                let name = data.get(j + 3..j + 3 + n)?;
                if data[j] == 0 {
                    return Some(
                        std::str::from_utf8(name)
                            .ok()
                            .map(|s| s.to_ascii_lowercase()),
                    );
                }
                j += 3 + n;
            }
            return Some(None);
        }
        i += 4 + len;
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with one extension: server_name `name`.
    fn hello(name: &str) -> Vec<u8> {
        let mut sni = vec![];
        let mut list = vec![0u8];
        list.extend((name.len() as u16).to_be_bytes());
        list.extend(name.as_bytes());
        sni.extend((list.len() as u16).to_be_bytes());
        sni.extend(list);
        let mut ext = (sni.len() as u16).to_be_bytes().to_vec();
        ext.splice(0..0, [0, 0]);
        ext.extend(&sni);
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut hs = vec![1, 0];
        hs.extend((body.len() as u16).to_be_bytes());
        hs.extend(body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    #[test]
    fn the_server_name_is_read() {
        let h = hello("Reviews.Example");
        assert_eq!(client_hello(&h), Hello::Tls(Some("reviews.example".into())));
        assert_eq!(client_hello(&h[..h.len() - 3]), Hello::NeedMore);
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(client_hello(b""), Hello::NeedMore);
    }

    #[test]
    fn garbage_is_no_name_and_no_panic() {
        let h = hello("a.b");
        for cut in 0..h.len() {
            let mut bad = h.clone();
            bad[cut] = 0xff;
            let _ = client_hello(&bad);
            let _ = client_hello(&h[..cut]);
        }
        // A record that claims more than it holds is waited for.
        assert_eq!(client_hello(&[0x16, 3, 1, 0x10, 0x00, 1]), Hello::NeedMore);
        assert_eq!(client_hello(&[0x16, 3, 1, 0xff, 0xff, 1]), Hello::NotTls);
    }
}
