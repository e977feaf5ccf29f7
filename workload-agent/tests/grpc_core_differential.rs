//! Differential test of the `h2_authority` frame layer: over recorded grpc-core and tonic
//! client streams and random HPACK streams, an independent HPACK decoder (`fluke-hpack`)
//! reads the same header lists from the layer's output as from its input, except that every
//! `:authority` h2 would refuse is replaced (same length); every other frame is unchanged, and
//! no output frame exceeds the frame size. Inputs are fed in random chunk sizes.

use std::collections::VecDeque;
use std::path::Path;

use lanyard_agent::h2_authority::frame::{
    CONTINUATION, END_HEADERS, FrameHeader, HEADER_LEN, HEADERS, PADDED, PRIORITY, PRIORITY_LEN,
};
use lanyard_agent::h2_authority::hpack::{
    encode_integer, is_acceptable_authority, replacement_for, replacement_of_len,
};
use lanyard_agent::h2_authority::{FrameRewriter, RewriterLimits, huffman};

const PREFACE_LEN: usize = 24;
type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;
/// A header block being reassembled: stream, END_STREAM, priority fields, fragments so far.
type OpenBlock = (u32, bool, Option<Vec<u8>>, Vec<u8>);

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// What a server sees in a client stream: header blocks (stream, END_STREAM, priority fields,
/// decoded list) and every other frame as it is.
#[derive(Debug, PartialEq)]
enum Seen {
    Headers {
        stream: u32,
        end_stream: bool,
        priority: Option<Vec<u8>>,
        list: HeaderList,
    },
    Other(FrameHeader, Vec<u8>),
}

/// Splits a client stream (after the preface) into what a server sees, with a fresh reference
/// decoder. Panics on anything invalid.
fn server_view(mut bytes: &[u8], max_frame: usize) -> Vec<Seen> {
    let mut decoder = fluke_hpack::Decoder::new();
    let mut seen = Vec::new();
    let mut open: Option<OpenBlock> = None;
    while !bytes.is_empty() {
        let h = FrameHeader::parse(bytes[..HEADER_LEN].try_into().unwrap());
        assert!(h.len <= max_frame, "a {}-octet frame", h.len);
        let payload = &bytes[HEADER_LEN..HEADER_LEN + h.len];
        bytes = &bytes[HEADER_LEN + h.len..];
        let fragment = match h.kind {
            HEADERS => {
                assert!(open.is_none());
                let mut start = 0;
                let mut pad = 0;
                if h.flags & PADDED != 0 {
                    pad = usize::from(payload[0]);
                    start = 1;
                }
                let priority = (h.flags & PRIORITY != 0)
                    .then(|| payload[start..start + PRIORITY_LEN].to_vec());
                if priority.is_some() {
                    start += PRIORITY_LEN;
                }
                open = Some((h.stream, h.flags & 0x1 != 0, priority, Vec::new()));
                &payload[start..payload.len() - pad]
            }
            CONTINUATION => {
                assert_eq!(open.as_ref().unwrap().0, h.stream);
                payload
            }
            _ => {
                assert!(open.is_none());
                seen.push(Seen::Other(h, payload.to_vec()));
                continue;
            }
        };
        open.as_mut().unwrap().3.extend_from_slice(fragment);
        if h.flags & END_HEADERS != 0 {
            let (stream, end_stream, priority, block) = open.take().unwrap();
            let list = decoder
                .decode(&block)
                .expect("the reference decoder reads the block");
            seen.push(Seen::Headers {
                stream,
                end_stream,
                priority,
                list,
            });
        }
    }
    assert!(open.is_none(), "the stream ends inside a header block");
    seen
}

/// The input's view with every refused `:authority` replaced, as the layer promises.
fn expected(view: Vec<Seen>) -> (Vec<Seen>, usize) {
    let mut replaced = 0;
    let view = view
        .into_iter()
        .map(|s| match s {
            Seen::Headers {
                stream,
                end_stream,
                priority,
                list,
            } => Seen::Headers {
                stream,
                end_stream,
                priority,
                list: list
                    .into_iter()
                    .map(|(n, v)| match replacement_for(&v) {
                        Some(r) if n == b":authority" => {
                            replaced += 1;
                            (n, r)
                        }
                        _ => (n, v),
                    })
                    .collect(),
            },
            other => other,
        })
        .collect();
    (view, replaced)
}

fn rewrite(input: &[u8], limits: RewriterLimits, rng: &mut Rng) -> (Vec<u8>, u64) {
    let (out, rewrites, _) = rewrite_with_table(input, limits, rng);
    (out, rewrites)
}

/// Also returns the tracker's dynamic table at the end: (size in octets, entries).
fn rewrite_with_table(
    input: &[u8],
    limits: RewriterLimits,
    rng: &mut Rng,
) -> (Vec<u8>, u64, (usize, usize)) {
    let mut rewriter = FrameRewriter::new(limits);
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = (1 + rng.below(3000)).min(rest.len());
        rewriter.process(&rest[..n], &mut out).expect("valid input");
        rest = &rest[n..];
    }
    (out, rewriter.rewrites(), rewriter.table())
}

/// The tracker ends with exactly the encoder's table (size and entry count).
fn check_table(input: &[u8], limits: RewriterLimits, generator: &Generator, seed: u64) {
    let (_, _, table) = rewrite_with_table(input, limits, &mut Rng(seed | 1));
    assert_eq!(
        table,
        (generator.size, generator.table.len()),
        "seed {seed}"
    );
}

/// Runs the differential check on a client stream (after the preface); returns how many
/// values were replaced.
fn check(input: &[u8], limits: RewriterLimits, seed: u64) -> usize {
    let mut rng = Rng(seed | 1);
    let (want, replaced) = expected(server_view(input, usize::MAX));
    let (out, rewrites) = rewrite(input, limits, &mut rng);
    let got = server_view(&out, limits.max_frame_size);
    assert_eq!(got, want, "seed {seed}");
    // Indexed references to a rewritten entry count as replaced but need no rewrite.
    assert!(rewrites as usize <= replaced);
    assert_eq!(rewrites == 0, replaced == 0);
    replaced
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/h2")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn recorded_grpc_core_stream() {
    // Python grpcio 1.85 (grpc-core), three calls on one connection, recorded by
    // tests/python/record_grpc_core.py.
    let recorded = fixture("grpc_core_3_calls.bin");
    assert_eq!(
        &recorded[..PREFACE_LEN],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    );
    let input = &recorded[PREFACE_LEN..];

    // The recording shows the problem: a percent-encoded path as :authority, entered in the
    // dynamic table on the first call and referenced by index afterwards.
    let view = server_view(input, 16_384);
    let authorities: Vec<_> = view
        .iter()
        .filter_map(|s| match s {
            Seen::Headers { list, .. } => list.iter().find(|(n, _)| n == b":authority"),
            _ => None,
        })
        .collect();
    assert_eq!(authorities.len(), 3);
    assert!(authorities.iter().all(|(_, v)| v == &authorities[0].1));
    assert!(!is_acceptable_authority(&authorities[0].1));
    assert!(authorities[0].1.windows(3).any(|w| w == b"%2F"));

    for seed in 1..50 {
        // One rewrite: the later calls reference the already-rewritten table entry.
        assert_eq!(check(input, RewriterLimits::default(), seed), 3);
        let (out, rewrites) = rewrite(input, RewriterLimits::default(), &mut Rng(seed));
        assert_eq!(rewrites, 1, "only the literal is rewritten");
        // The new value goes out Huffman-coded when shorter, so the stream may shrink.
        assert!(out.len() <= input.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_tonic_stream_passes_byte_for_byte() {
    use lanyard_client::channel::{connect, request};
    use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    use lanyard_proto::workload::{JwtsvidRequest, X509BundlesRequest, X509svidRequest};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let recorder = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut data = Vec::new();
        let mut answered = false;
        loop {
            let mut buf = [0u8; 8192];
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed before three calls");
            data.extend_from_slice(&buf[..n]);
            if !answered && data.len() >= PREFACE_LEN {
                // Empty SETTINGS, then an ack of the client's.
                conn.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0])
                    .await
                    .unwrap();
                answered = true;
            }
            if data.len() > PREFACE_LEN && whole_frames_with_headers(&data[PREFACE_LEN..]) >= 3 {
                return data;
            }
        }
    });
    let channel = connect(&path).await.unwrap();
    let timeout = std::time::Duration::from_secs(5);
    let calls = tokio::spawn(async move {
        let client = SpiffeWorkloadApiClient::new(channel);
        let (mut a, mut b, mut c) = (client.clone(), client.clone(), client);
        let _ = tokio::join!(
            a.fetch_x509svid(request(X509svidRequest {}, timeout)),
            b.fetch_jwtsvid(request(
                JwtsvidRequest {
                    audience: vec!["a".into()],
                    spiffe_id: String::new(),
                },
                timeout
            )),
            c.fetch_x509_bundles(request(X509BundlesRequest {}, timeout)),
        );
    });
    let recorded = tokio::time::timeout(std::time::Duration::from_secs(20), recorder)
        .await
        .expect("three calls recorded")
        .unwrap();
    calls.abort();
    let input = &recorded[PREFACE_LEN..];
    for seed in 1..20 {
        assert_eq!(check(input, RewriterLimits::default(), seed), 0);
        let (out, _) = rewrite(input, RewriterLimits::default(), &mut Rng(seed));
        assert_eq!(out, input, "tonic's valid authority: nothing changes");
    }
}

fn whole_frames_with_headers(mut data: &[u8]) -> usize {
    let mut headers = 0;
    while data.len() >= HEADER_LEN {
        let h = FrameHeader::parse(data[..HEADER_LEN].try_into().unwrap());
        if data.len() < HEADER_LEN + h.len {
            return 0;
        }
        headers += usize::from(h.kind == HEADERS);
        data = &data[HEADER_LEN + h.len..];
    }
    if data.is_empty() { headers } else { 0 }
}

/// Generates random client streams: every HPACK representation, Huffman and plain strings,
/// dynamic table references to `:authority` entries, size updates forcing evictions, blocks
/// split at random points into HEADERS (padded, with priority) and CONTINUATION frames, with
/// other frames in between.
struct Generator {
    rng: Rng,
    /// The encoder's dynamic table, newest first: (name, value).
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
    next_stream: u32,
}

const NAMES: &[&[u8]] = &[
    b":authority",
    b":path",
    b"content-type",
    b"te",
    b"workload.spiffe.io",
    b"x-long",
];
const STATIC_NAMES: &[(usize, &[u8])] = &[
    (1, b":authority"),
    (2, b":method"),
    (4, b":path"),
    (6, b":scheme"),
    (31, b"content-type"),
    (38, b"host"),
    (58, b"user-agent"),
];

impl Generator {
    fn value(&mut self) -> Vec<u8> {
        match self.rng.below(8) {
            0 => b"%2Frun%2Flanyard%2Fagent.sock".to_vec(),
            1 => b"tmp%2Fa".to_vec(),
            2 => b"%".to_vec(),
            3 => b"localhost:8080".to_vec(),
            4 => Vec::new(),
            5 => (0..self.rng.below(40))
                .map(|_| self.rng.below(256) as u8)
                .collect(),
            6 => {
                let len = 100 + self.rng.below(3000);
                let mut v = b"%2F".repeat(len / 3);
                v.push(b'x');
                v
            }
            _ => b"application/grpc".to_vec(),
        }
    }

    fn string(&mut self, s: &[u8], out: &mut Vec<u8>) {
        if self.rng.chance(50) {
            encode_integer(huffman::encoded_len(s) as u64, 7, 0x80, out);
            huffman::encode(s, out);
        } else {
            encode_integer(s.len() as u64, 7, 0, out);
            out.extend_from_slice(s);
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + 32;
        if size > self.max_size {
            self.table.clear();
            self.size = 0;
            return;
        }
        while self.size + size > self.max_size {
            let (n, v) = self.table.pop_back().unwrap();
            self.size -= n.len() + v.len() + 32;
        }
        self.size += size;
        self.table.push_front((name, value));
    }

    fn set_max(&mut self, max: usize, out: &mut Vec<u8>) {
        encode_integer(max as u64, 5, 0x20, out);
        self.max_size = max;
        while self.size > max {
            let (n, v) = self.table.pop_back().unwrap();
            self.size -= n.len() + v.len() + 32;
        }
    }

    fn block(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.rng.chance(15) {
            let max = [0, 64, 200, 4096][self.rng.below(4)];
            self.set_max(max, &mut out);
        }
        for _ in 0..1 + self.rng.below(8) {
            match self.rng.below(10) {
                0 => encode_integer(1 + self.rng.below(61) as u64, 7, 0x80, &mut out),
                1 | 2 if !self.table.is_empty() => {
                    let i = self.rng.below(self.table.len());
                    encode_integer((62 + i) as u64, 7, 0x80, &mut out);
                }
                _ => {
                    let (flags, bits) = [(0x40, 6), (0x00, 4), (0x10, 4)][self.rng.below(3)];
                    let name = match self.rng.below(3) {
                        0 => {
                            let (i, n) = STATIC_NAMES[self.rng.below(STATIC_NAMES.len())];
                            encode_integer(i as u64, bits, flags, &mut out);
                            n.to_vec()
                        }
                        1 if !self.table.is_empty() => {
                            let i = self.rng.below(self.table.len());
                            encode_integer((62 + i) as u64, bits, flags, &mut out);
                            self.table[i].0.clone()
                        }
                        _ => {
                            let n = NAMES[self.rng.below(NAMES.len())].to_vec();
                            encode_integer(0, bits, flags, &mut out);
                            self.string(&n, &mut out);
                            n
                        }
                    };
                    let value = self.value();
                    self.string(&value, &mut out);
                    if flags == 0x40 {
                        // The server's table holds the rewritten value: model what the
                        // encoder and decoder agree on after the layer (same size either way).
                        self.insert(name, value);
                    }
                }
            }
        }
        out
    }

    fn frame(&self, kind: u8, flags: u8, stream: u32, payload: &[u8], out: &mut Vec<u8>) {
        FrameHeader {
            len: payload.len(),
            kind,
            flags,
            stream,
        }
        .write(out);
        out.extend_from_slice(payload);
    }

    fn stream(&mut self, blocks: usize, max_frame: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..blocks {
            if self.rng.chance(30) {
                self.frame(0x8, 0, 0, &[0, 0, 0x10, 0], &mut out);
            }
            if self.rng.chance(20) {
                self.frame(0x6, 0, 0, &[7; 8], &mut out);
            }
            let stream = self.next_stream;
            self.next_stream += 2;
            let block = self.block();
            let mut rest = &block[..];
            let mut first = true;
            loop {
                let mut prefix = Vec::new();
                let mut padding = Vec::new();
                let mut flags = 0;
                if first {
                    if self.rng.chance(25) {
                        let pad = self.rng.below(20);
                        prefix.push(pad as u8);
                        padding = vec![0; pad];
                        flags |= PADDED;
                    }
                    if self.rng.chance(25) {
                        prefix.extend_from_slice(&[0, 0, 0, 1, 200]);
                        flags |= PRIORITY;
                    }
                    if self.rng.chance(50) {
                        flags |= 0x1;
                    }
                }
                let room = max_frame - prefix.len() - padding.len();
                let cut = rest.len().min(self.rng.below(room + 1));
                let (piece, after) = rest.split_at(cut);
                rest = after;
                if rest.is_empty() {
                    flags |= END_HEADERS;
                }
                let mut payload = prefix;
                payload.extend_from_slice(piece);
                payload.extend_from_slice(&padding);
                let kind = if first { HEADERS } else { CONTINUATION };
                self.frame(kind, flags, stream, &payload, &mut out);
                first = false;
                if rest.is_empty() {
                    break;
                }
            }
            if self.rng.chance(50) {
                self.frame(0x0, 0x1, stream, b"\0\0\0\0\x02hi", &mut out);
            }
        }
        out
    }
}

fn generator(seed: u64) -> Generator {
    Generator {
        rng: Rng(seed | 1),
        table: VecDeque::new(),
        size: 0,
        max_size: 4096,
        next_stream: 1,
    }
}

#[test]
fn random_hpack_streams() {
    let mut replaced = 0;
    for seed in 0..150u64 {
        let mut g = generator(seed * 7919);
        let input = g.stream(12, 16_384);
        replaced += check(&input, RewriterLimits::default(), seed);
        check_table(&input, RewriterLimits::default(), &g, seed);
    }
    assert!(
        replaced > 500,
        "the streams exercise rewriting ({replaced})"
    );
}

#[test]
fn random_hpack_streams_with_small_frames_force_splits_and_carries() {
    // Frames of at most 64 octets: most fields straddle frames, and values that re-encode
    // longer push fragments into new CONTINUATION frames.
    let limits = RewriterLimits {
        max_frame_size: 64,
        ..RewriterLimits::default()
    };
    for seed in 0..150u64 {
        let mut g = generator(seed * 104_729 + 3);
        let input = g.stream(8, 64);
        check(&input, limits, seed);
        check_table(&input, limits, &g, seed);
    }
}

#[test]
fn replacement_lengths_match_for_every_recorded_length() {
    // The table sizes stay equal only if lengths do: spot-check the generator's values.
    for v in [&b"%2Frun%2Flanyard%2Fagent.sock"[..], b"tmp%2Fa", b"%"] {
        assert_eq!(replacement_for(v).unwrap().len(), v.len());
        assert_eq!(replacement_of_len(v.len()).len(), v.len());
    }
}
