//! The eBPF toolchain works end to end: netctl-ebpf compiled by build.rs
//! (aya-build, bpf-linker), embedded in netctl, accepted by the verifier, run
//! by the kernel through BPF_PROG_TEST_RUN on a crafted frame, and its
//! per-CPU `STATS` read back with netctl-common's `Counter` (both sides agree
//! on the layout). Nothing is attached to an interface and nothing is pinned.
//!
//! What the datapath decides for the frame is the business of the packet
//! tests (tests/tests/ebpf_passthrough.rs, ebpf_snat.rs, ebpf_dnat.rs,
//! ebpf_hairpin.rs, ebpf_conntrack.rs); here only the invariants hold: the
//! result is a TC verdict and the packet is counted exactly once, under one
//! verdict or drop reason.

use aya::{maps::PerCpuArray, programs::SchedClassifier, Ebpf, TestRun as _, TestRunOptions};
use netctl::datapath::ebpf::EBPF_OBJECT;
use netctl_common::stats::{Counter, STAT_COUNT, STAT_NAMES};

/// The verdicts a TC program of netctl may return: TC_ACT_OK, TC_ACT_SHOT,
/// TC_ACT_PIPE, TC_ACT_REDIRECT.
const TC_VERDICTS: [u32; 4] = [0, 2, 3, 7];

/// Internet checksum (RFC 1071) of a header.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 + UDP, 172.18.0.2:40000 -> 198.51.100.2:9000, with a payload.
fn udp_frame(payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len() as u16;
    let ip_len = 20 + udp_len;
    let mut frame = Vec::new();
    frame.extend_from_slice(&[0x02, 0x42, 0xac, 0x12, 0x00, 0x01]); // dst MAC (gateway)
    frame.extend_from_slice(&[0x02, 0x42, 0xac, 0x12, 0x00, 0x02]); // src MAC (container)
    frame.extend_from_slice(&0x0800u16.to_be_bytes()); // EtherType IPv4
    let mut ip = vec![0x45, 0x00];
    ip.extend_from_slice(&ip_len.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00]); // id, DF
    ip.extend_from_slice(&[64, 17, 0, 0]); // TTL, UDP, checksum (below)
    ip.extend_from_slice(&[172, 18, 0, 2]);
    ip.extend_from_slice(&[198, 51, 100, 2]);
    let csum = checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&40000u16.to_be_bytes());
    frame.extend_from_slice(&9000u16.to_be_bytes());
    frame.extend_from_slice(&udp_len.to_be_bytes());
    frame.extend_from_slice(&0u16.to_be_bytes()); // no UDP checksum (allowed on IPv4)
    frame.extend_from_slice(payload);
    frame
}

#[test]
fn endpoint_ingress_runs_in_the_kernel_and_counts_the_frame_once() {
    if !netctl_tests::privileged("loading BPF programs") {
        return;
    }
    let mut ebpf = Ebpf::load(EBPF_OBJECT).expect("load the embedded eBPF object");
    let program: &mut SchedClassifier = ebpf
        .program_mut("endpoint_ingress")
        .expect("endpoint_ingress in the object")
        .try_into()
        .expect("endpoint_ingress is a classifier");
    program
        .load()
        .expect("the verifier accepts endpoint_ingress");

    let frame = udp_frame(b"netctl toolchain check");
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    assert!(
        TC_VERDICTS.contains(&result.return_value),
        "verdict {} is not a TC action",
        result.return_value
    );

    let stats: PerCpuArray<_, Counter> =
        PerCpuArray::try_from(ebpf.map("STATS").expect("STATS map"))
            .expect("STATS is a per-CPU array of Counter");
    assert_eq!(stats.len(), STAT_COUNT, "STATS slots");
    let counted: Vec<(&str, Counter)> = (0..STAT_COUNT)
        .map(|index| {
            let total = stats.get(&index, 0).expect("read STATS").iter().fold(
                Counter::default(),
                |acc, c| Counter {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                },
            );
            (STAT_NAMES[index as usize], total)
        })
        .filter(|(_, total)| *total != Counter::default())
        .collect();
    println!("verdict {}, counted {counted:?}", result.return_value);
    assert_eq!(counted.len(), 1, "one slot counts the frame: {counted:?}");
    assert_eq!(
        counted[0].1,
        Counter {
            packets: 1,
            bytes: frame.len() as u64
        },
        "the frame, once, summed over CPUs"
    );
}
