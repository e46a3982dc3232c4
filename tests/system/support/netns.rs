//! Hosts of their own for the members of a cluster: one network namespace
//! per member, a veth link between every two of them and one to this
//! process's namespace (the test's client), each member on its own address
//! (`10.213.<net>.<member + 1>`). A partition drops packets with iptables
//! inside the namespaces, in one direction or both: TCP connections stay
//! open and hold what was sent, as across a real network, which fault
//! injection in the process cannot reproduce.
//!
//! Point-to-point links, not a bridge: bridged traffic would cross this
//! machine's own FORWARD chain (Docker sets it to DROP).
//!
//! It needs root (`ip netns`, iptables), as CI has; without it the test
//! fails, saying so.

use std::{net::Ipv4Addr, process::Command};

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (the partition tests need iproute2 and iptables)")
        });
    assert!(
        out.status.success(),
        "{program} {} failed: {}\nthe partition tests need root (network namespaces, iptables)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Net {
    /// This network's number: its namespaces, links and subnet.
    net: u8,
    pub ips: Vec<Ipv4Addr>,
}

impl Net {
    /// `members` namespaces, linked each to each and to this one.
    pub fn new(members: usize) -> Net {
        // The namespace's name is the lock: a number another test process
        // holds is taken already.
        let mut net = (std::process::id() % 250) as u8;
        let mut tries = 0;
        while !Command::new("ip")
            .args(["netns", "add", &format!("fl{net}n0")])
            .status()
            .is_ok_and(|s| s.success())
        {
            tries += 1;
            assert!(
                tries < 250,
                "no free network number (ip netns add fails: root?)"
            );
            net = net.wrapping_add(1) % 250;
        }
        let ips: Vec<Ipv4Addr> = (0..members)
            .map(|i| Ipv4Addr::new(10, 213, net, i as u8 + 1))
            .collect();
        let this = Net { net, ips };
        for i in 1..members {
            run("ip", &["netns", "add", &this.ns(i)]);
        }
        for i in 0..members {
            let ns = this.ns(i);
            let ip = this.ips[i].to_string();
            this.exec(i, "ip", &["link", "set", "lo", "up"]);
            this.exec(i, "ip", &["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
            // To the test's client.
            let (outside, inside) = (format!("fl{net}r{i}"), format!("fl{net}n{i}r"));
            run(
                "ip",
                &[
                    "link", "add", &outside, "type", "veth", "peer", "name", &inside,
                ],
            );
            run("ip", &["link", "set", &inside, "netns", &ns]);
            run("ip", &["link", "set", &outside, "up"]);
            run(
                "ip",
                &["route", "add", &format!("{ip}/32"), "dev", &outside],
            );
            this.exec(i, "ip", &["link", "set", &inside, "up"]);
            this.exec(i, "ip", &["route", "add", "default", "dev", &inside]);
        }
        for i in 0..members {
            for j in i + 1..members {
                let (a, b) = (format!("fl{net}n{i}p{j}"), format!("fl{net}n{j}p{i}"));
                run(
                    "ip",
                    &["link", "add", &a, "type", "veth", "peer", "name", &b],
                );
                run("ip", &["link", "set", &a, "netns", &this.ns(i)]);
                run("ip", &["link", "set", &b, "netns", &this.ns(j)]);
                this.exec(i, "ip", &["link", "set", &a, "up"]);
                this.exec(j, "ip", &["link", "set", &b, "up"]);
                let (ip_i, ip_j) = (this.ips[i].to_string(), this.ips[j].to_string());
                this.exec(
                    i,
                    "ip",
                    &[
                        "route",
                        "add",
                        &format!("{ip_j}/32"),
                        "dev",
                        &a,
                        "src",
                        &ip_i,
                    ],
                );
                this.exec(
                    j,
                    "ip",
                    &[
                        "route",
                        "add",
                        &format!("{ip_i}/32"),
                        "dev",
                        &b,
                        "src",
                        &ip_j,
                    ],
                );
            }
        }
        this
    }

    fn ns(&self, i: usize) -> String {
        format!("fl{}n{i}", self.net)
    }

    fn exec(&self, i: usize, program: &str, args: &[&str]) {
        let ns = self.ns(i);
        let mut all = vec!["netns", "exec", ns.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// What starts a process in member `i`'s namespace.
    pub fn launcher(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec", &self.ns(i)]
            .map(str::to_owned)
            .to_vec()
    }

    /// Packets from member `from` no longer reach member `to` (dropped as
    /// they arrive: `to` sends, `from` never hears back).
    pub fn drop_from(&self, from: usize, to: usize) {
        let source = self.ips[from].to_string();
        self.exec(
            to,
            "iptables",
            &["-A", "INPUT", "-s", &source, "-j", "DROP"],
        );
    }

    /// No packet passes between `a` and `b`, either way.
    pub fn cut(&self, a: usize, b: usize) {
        self.drop_from(a, b);
        self.drop_from(b, a);
    }

    /// Member `i` is cut off from every other member (the test's client
    /// still reaches it).
    pub fn isolate(&self, i: usize) {
        for j in 0..self.ips.len() {
            if j != i {
                self.cut(i, j);
            }
        }
    }

    /// Every partition healed.
    pub fn heal(&self) {
        for i in 0..self.ips.len() {
            self.exec(i, "iptables", &["-F", "INPUT"]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the links in it, and with them their
        // other ends.
        for i in 0..self.ips.len() {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.ns(i)])
                .status();
        }
    }
}
