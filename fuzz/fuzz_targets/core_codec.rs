//! Fuzzes the kernel's wire codec: arbitrary bytes decode to an error or a
//! message (never a panic, never an allocation beyond the input's size), and
//! a decoded message re-encodes to a frame that decodes to the same message
//! and re-encodes to itself. (Not always to the input: the codec reads older
//! wire versions and writes each message in the lowest version that can
//! carry it, so a version-2 or -3 frame of a version-1 message re-encodes
//! as version 1.) CI twin: the
//! `arbitrary_bytes_never_panic` and `mutated_messages_never_panic`
//! proptests in paxos-core's tests/it/codec.rs.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use paxos_core::Codec;

fuzz_target!(|data: &[u8]| {
    let codec = Codec::new(1 << 16);
    let input = Bytes::copy_from_slice(data);
    let Ok(env) = codec.decode(input) else {
        return;
    };
    let again = codec.encode_to_bytes(&env).expect("a decoded message re-encodes");
    let back = codec
        .decode(again.clone())
        .expect("a re-encoded message decodes");
    assert_eq!(back, env, "re-encoding keeps the message");
    let fixed = codec.encode_to_bytes(&back).expect("and re-encodes again");
    assert_eq!(fixed, again, "the re-encoding is canonical");
});
