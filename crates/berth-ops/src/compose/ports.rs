//! Compose port mappings, short (`"127.0.0.1:8080:80/tcp"`) and long (`target`, `published`,
//! `host_ip`, `protocol`).

use crate::yaml::Node;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: Option<String>,
    /// `None`: Docker picks a host port. A range keeps its first port.
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub udp: bool,
    /// More than one port in a range (`8000-8010:8000-8010`): only the first is carried.
    pub range: bool,
}

pub fn parse_short(spec: &str) -> Result<PortMapping, String> {
    let (spec, protocol) = match spec.rsplit_once('/') {
        Some((rest, proto)) => (rest, proto),
        None => (spec, "tcp"),
    };
    let udp = match protocol {
        "tcp" => false,
        "udp" => true,
        other => return Err(format!("protocol `{other}` is not tcp or udp")),
    };
    // An IPv6 host address is bracketed: [::1]:8080:80.
    let (host_ip, rest) = if let Some(bracketed) = spec.strip_prefix('[') {
        let (ip, rest) = bracketed
            .split_once("]:")
            .ok_or_else(|| format!("`{spec}`: the bracketed address is not closed"))?;
        (Some(ip.to_owned()), rest.to_owned())
    } else {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.len() {
            1 | 2 => (None, spec.to_owned()),
            3 => (
                Some(parts[0].to_owned()),
                format!("{}:{}", parts[1], parts[2]),
            ),
            _ => {
                return Err(format!(
                    "`{spec}` is not [HOST_IP:][HOST_PORT:]CONTAINER_PORT"
                ));
            }
        }
    };
    let (host, container) = match rest.split_once(':') {
        Some((host, container)) => (Some(host), container),
        None => (None, rest.as_str()),
    };
    let (container_port, container_range) = port_or_range(container)?;
    let (host_port, host_range) = match host {
        Some("") | None => (None, false),
        Some(h) => {
            let (p, r) = port_or_range(h)?;
            (Some(p), r)
        }
    };
    Ok(PortMapping {
        host_ip: host_ip.filter(|ip| !ip.is_empty()),
        host_port,
        container_port,
        udp,
        range: container_range || host_range,
    })
}

pub fn parse_long(node: &Node) -> Result<PortMapping, String> {
    let target = node
        .get("target")
        .and_then(Node::as_int)
        .ok_or("a long-form port needs `target`")?;
    let container_port =
        u16::try_from(target).map_err(|_| format!("port {target} is out of range"))?;
    let (host_port, range) = match node.get("published").and_then(Node::scalar) {
        Some(p) => {
            let (port, range) = port_or_range(&p)?;
            (Some(port), range)
        }
        None => (None, false),
    };
    let udp = node.get("protocol").and_then(Node::as_str) == Some("udp");
    Ok(PortMapping {
        host_ip: node.get("host_ip").and_then(Node::scalar),
        host_port,
        container_port,
        udp,
        range,
    })
}

fn port_or_range(text: &str) -> Result<(u16, bool), String> {
    let (first, range) = match text.split_once('-') {
        Some((first, _)) => (first, true),
        None => (text, false),
    };
    let port: u16 = first
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a port number"))?;
    if port == 0 {
        return Err("port 0 is not a port".into());
    }
    Ok((port, range))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_forms() {
        let p = parse_short("8080:80").unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.host_ip),
            (Some(8080), 80, None)
        );
        let p = parse_short("127.0.0.1:5432:5432").unwrap();
        assert_eq!(p.host_ip.as_deref(), Some("127.0.0.1"));
        let p = parse_short("3000").unwrap();
        assert_eq!((p.host_port, p.container_port), (None, 3000));
        let p = parse_short("[::1]:6379:6379").unwrap();
        assert_eq!(p.host_ip.as_deref(), Some("::1"));
        assert!(parse_short("53:53/udp").unwrap().udp);
        assert!(parse_short("9000-9010:9000-9010").unwrap().range);
        assert!(parse_short("x:80").is_err());
        assert!(parse_short("80/sctp").is_err());
    }
}
