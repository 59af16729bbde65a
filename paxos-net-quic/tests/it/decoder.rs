//! Bounded property tests of the frame decoder (the CI twin of a fuzz target).

use bytes::{Bytes, BytesMut};
use paxos_net_quic::frame::{encode_frame, FrameDecoder, FrameError, StreamHeader, HEADER_BYTES};
use proptest::prelude::*;

const MAX: u32 = 4096;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Valid frames, cut at arbitrary points, come out identical and in order.
    #[test]
    fn frames_survive_any_chunking(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 0..40),
        cuts in proptest::collection::vec(1usize..700, 1..50),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            encode_frame(f, &mut wire);
        }
        let wire = wire.freeze();
        let mut dec = FrameDecoder::new(MAX);
        let mut out = Vec::new();
        let mut at = 0;
        let mut cut = cuts.iter().cycle();
        while at < wire.len() {
            let end = (at + cut.next().copied().unwrap_or(1)).min(wire.len());
            dec.push(wire.slice(at..end));
            at = end;
            while let Some(f) = dec.next_frame().map_err(|e| TestCaseError::fail(e.to_string()))? {
                out.push(f.to_vec());
            }
        }
        prop_assert_eq!(out, frames);
        prop_assert!(dec.finish().is_ok());
    }

    /// Arbitrary bytes never panic, never yield a frame over the maximum,
    /// and never make the decoder reserve more than a frame's worth.
    #[test]
    fn garbage_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2048), 0..16)) {
        let mut dec = FrameDecoder::new(MAX);
        'outer: for c in chunks {
            dec.push(Bytes::from(c));
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => prop_assert!(f.len() <= MAX as usize),
                    Ok(None) => break,
                    Err(FrameError::TooLarge { len_bytes, .. }) => {
                        prop_assert!(len_bytes > u64::from(MAX));
                        prop_assert!(dec.next_frame().is_err());
                        break 'outer;
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e}"))),
                }
            }
            prop_assert!(dec.buffer_capacity() <= 2 * (MAX as usize + 4) + 2048 * 2);
        }
    }

    /// Any 16 bytes decode to a header or an error, never a panic; valid
    /// headers round-trip.
    #[test]
    fn header_decode_total(raw in proptest::array::uniform16(any::<u8>())) {
        let raw: [u8; HEADER_BYTES] = raw;
        if let Ok(h) = StreamHeader::decode(&raw) {
            prop_assert_eq!(h.encode(), raw);
        }
    }
}
