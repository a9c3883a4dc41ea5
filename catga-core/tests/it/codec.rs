use catga_core::Format;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    lines: Vec<(String, u32)>,
    note: Option<String>,
    total_cents: i64,
    paid: bool,
}

fn order() -> impl Strategy<Value = Order> {
    (
        any::<u64>(),
        ".{0,40}",
        proptest::collection::vec((".{0,12}", any::<u32>()), 0..8),
        proptest::option::of(".{0,30}"),
        any::<i64>(),
        any::<bool>(),
    )
        .prop_map(|(id, customer, lines, note, total_cents, paid)| Order {
            id,
            customer,
            lines,
            note,
            total_cents,
            paid,
        })
}

proptest! {
    #[test]
    fn msgpack_round_trips(o in order()) {
        let bytes = Format::MsgPack.encode(&o).unwrap();
        prop_assert_eq!(Format::MsgPack.decode::<Order>(&bytes).unwrap(), o);
    }

    #[test]
    fn json_round_trips(o in order()) {
        let bytes = Format::Json.encode(&o).unwrap();
        prop_assert_eq!(Format::Json.decode::<Order>(&bytes).unwrap(), o);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = Format::MsgPack.decode::<Order>(&bytes);
        let _ = Format::Json.decode::<Order>(&bytes);
    }
}

#[test]
fn msgpack_writes_field_names() {
    #[derive(Serialize)]
    struct P {
        qty: u8,
    }
    // fixmap(1), fixstr(3) "qty", positive fixint 5
    assert_eq!(
        Format::MsgPack.encode(&P { qty: 5 }).unwrap(),
        [0x81, 0xa3, b'q', b't', b'y', 0x05]
    );
}

#[test]
fn decode_errors_are_codec_errors_naming_the_type() {
    let err = Format::MsgPack.decode::<Order>(&[0xc1]).unwrap_err();
    assert_eq!(err.kind(), catga_core::ErrorKind::Codec);
    assert!(err.to_string().contains("Order"), "{err}");
}

#[test]
fn content_types_map_to_formats() {
    for f in [Format::MsgPack, Format::Json] {
        assert_eq!(Format::from_content_type(f.content_type()), Some(f));
    }
    assert_eq!(Format::from_content_type("text/plain"), None);
}
