//! Feeds arbitrary bytes to the broker's frame decoder, as a connection would deliver
//! them, in arbitrary pieces. The decoder must never panic, never hand out a frame longer
//! than its limit, and never reserve more than one frame's worth of buffer; decoding a
//! frame's body must never panic either, and whatever decodes must encode again. The
//! payloads of authentication frames go on through the broker's parsers of them (SCRAM's
//! messages, SASL PLAIN), which must not panic either.

#![no_main]

use bytes::BytesMut;
use herald_protocol::scram::{Credentials, ServerFirst};
use herald_protocol::{sasl, Frame, FrameCodec, Message, SaslContinue, SaslStart};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

/// Small, so that length checks are exercised without huge inputs.
const MAX_FRAME: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the stream is cut into reads.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(cut).max(1);
    let mut codec = FrameCodec::new(MAX_FRAME);
    let mut buffer = BytesMut::new();
    for chunk in stream.chunks(piece) {
        buffer.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(raw)) => {
                    assert!(raw.body.len() + 8 <= MAX_FRAME as usize);
                    let id = raw.correlation_id;
                    if let Ok(frame) = raw.decode() {
                        authentication_payloads(&frame);
                        let mut out = BytesMut::new();
                        let message = Message::new(id, frame);
                        FrameCodec::new(u32::MAX)
                            .encode(message, &mut out)
                            .expect("a decoded frame encodes");
                    }
                }
                Ok(None) => {
                    assert!(buffer.capacity() <= 2 * (4 + MAX_FRAME as usize) + piece);
                    break;
                }
                // The connection would be closed here.
                Err(_) => return,
            }
        }
    }
});

/// What the broker does first with an authentication frame's payload.
fn authentication_payloads(frame: &Frame) {
    match frame {
        Frame::SaslStart(SaslStart { payload, .. }) => {
            let _ = sasl::parse_plain(payload);
            if let Ok(first) = ServerFirst::parse(&String::from_utf8_lossy(payload)) {
                let credentials = Credentials::derive("pw", b"salt".to_vec(), 4096);
                let (_, expects) = first.answer(credentials);
                let _ = expects.verify(&String::from_utf8_lossy(payload));
            }
        }
        Frame::SaslContinue(SaslContinue { payload }) => {
            let first = ServerFirst::parse("n,,n=alice,r=nonce").expect("a valid first message");
            let (_, expects) = first.answer(Credentials::derive("pw", b"salt".to_vec(), 4096));
            let _ = expects.verify(&String::from_utf8_lossy(payload));
        }
        _ => {}
    }
}
