//! Fuzzes the kernel's wire codec: arbitrary bytes decode to an error or a
//! message (never a panic, never an allocation beyond the input's size), and
//! a decoded message re-encodes to exactly the input. CI twin: the
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
    assert_eq!(again.as_ref(), data, "decoding is canonical");
});
