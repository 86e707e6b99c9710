//! Behaviour tests for the whole detector, written from how people really
//! write (not from the dev set), plus property tests.

use super::*;
use proptest::prelude::*;
use std::sync::OnceLock;

/// Built once: compiling the patterns dominates a single analysis.
fn detector() -> &'static Detector {
    static DETECTOR: OnceLock<Detector> = OnceLock::new();
    DETECTOR.get_or_init(|| Detector::new(&DetectorConfig::default()))
}

fn kinds(text: &str) -> Vec<ContactKind> {
    detector()
        .analyze(text)
        .detections
        .iter()
        .map(|d| d.kind)
        .collect()
}

fn assert_contact(text: &str, kind: ContactKind) {
    let a = detector().analyze(text);
    assert!(
        a.detections.iter().any(|d| d.kind == kind),
        "expected {kind:?} in {text:?}, got {a:?}"
    );
}

fn assert_clean(text: &str) {
    let a = detector().analyze(text);
    assert!(!a.has_contact, "expected clean: {text:?}, got {a:?}");
    assert_eq!(a.risk, Risk::None);
}

#[test]
fn phones_in_many_shapes() {
    for t in [
        "Hey, text me at 512-555-0199 when you land",
        "my cell: +1 (646) 555 0147",
        "ring me on 07700 900123",
        "ruf mich an: 0151 2345 6789",
        "tu peux m'appeler sur le 07 55 13 86 42 ce soir",
        "llámame al 612 34 56 78",
        "me liga: (11) 98765-4321",
        "Whatsapp +61 412 345 678",
        "call me eight one eight, five five five, zero one nine nine",
        "mi cel es cinco cinco uno dos tres cuatro cinco seis siete ocho",
        "meu número é nove nove oito sete seis cinco quatro três dois um",
        "ruf an: null eins fünf eins, zwei drei vier fünf sechs sieben",
        "text 5 5 5 - 2 0 1 - 4 4 7 8",
        "call 555🙂201🙂4478",
        "number is ５５５ ２０１ ４４７８ ok",
        "call 4️⃣1️⃣5️⃣5️⃣5️⃣5️⃣0️⃣1️⃣9️⃣9️⃣",
        "my cell is 4l5-555-Ol99",
        "its 555 then 201 then 4478",
        "call oh seven seven double oh nine double one two three",
    ] {
        assert_contact(t, ContactKind::Phone);
    }
}

#[test]
fn emails_plain_and_disguised() {
    for t in [
        "my address is ruben.ortiz@gmail.com",
        "ruben dot ortiz at outlook dot com",
        "jane.doe [at] outlook [dot] com",
        "jane_doe(at)web(dot)de",
        "jane.doe88 ＠ gmail．com",
        "send it to j a n e d o e @ g m a i l . c o m",
        "gmail: ortiz.ruben, drop me a line",
        "write me at janedoe77 at yahoo",
    ] {
        assert_contact(t, ContactKind::Email);
    }
}

#[test]
fn links_apps_and_payments() {
    assert_contact("see janescakes.com/menu for prices", ContactKind::Url);
    assert_contact("link: bit . ly / 3xYz", ContactKind::Url);
    assert_contact("janescakes dot co dot uk", ContactKind::Url);
    assert_contact(
        "google Janes Cakes Leeds and book direct, cheaper",
        ContactKind::Url,
    );
    assert_contact("insta: @janes.cakes", ContactKind::Social);
    assert_contact("follow me on tik tok jane_bakes", ContactKind::Social);
    assert_contact("my snap is kayla.sun_3", ContactKind::Social);
    assert_contact("is WhatsApp ok for you?", ContactKind::MessagingApp);
    assert_contact("hit me up on telegram @janeb", ContactKind::MessagingApp);
    assert_contact("wa.me/447700900123", ContactKind::Phone);
    assert_contact("would you Venmo me the rest?", ContactKind::Payment);
    assert_contact("my cashtag is $JaneB22", ContactKind::Payment);
    assert_contact("paypal.me/janeb", ContactKind::Payment);
    assert_contact("me faz um pix, chave 11987654321", ContactKind::Payment);
}

#[test]
fn ordinary_numbers_are_clean() {
    for t in [
        "It's $1,250 for the week, or €180 per night",
        "10% less for a stay of a week or more",
        "Check-in 15:00, check-out 11am, arriving 12/06/2026",
        "3 grown-ups, 2 teens and a cat",
        "Booking ref HMX4QZ2 / order #4455667788",
        "Tracking number 1Z999AA10123456784",
        "Confirmation no. 7731 223 918 for my records",
        "bank reference 3391057264 for the deposit",
        "We're in 94107, is that in range?",
        "The Bosch SHPM65Z55N and the GE GTW465ASNWW both work",
        "Gate code is 4821#, wifi password sunny2024",
        "Rated 4.9/5 and 10/10 would stay again",
        "Dating from 1987, with a 2019 refurb",
        "The apartment is 85 m², 3rd floor, 2 bedrooms",
        "two adults and one child, four towels please",
        "On arrive à trois, avec deux vélos.",
        "Llegamos el 16 de febrero a las 14:30",
        "Between 9 and 5 works, or 10:30-12:00",
        "See you tomorrow :) <3 ^_^",
        "our train IC 2218 gets in at 7:45",
    ] {
        assert_clean(t);
    }
}

#[test]
fn ordinary_words_and_platform_are_clean() {
    for t in [
        "see you @ the boathouse at 7",
        "doors open @7:30pm",
        "battery died on my phone, back now",
        "no cell coverage on the island, fyi",
        "snap peas and herbs in the garden are free to pick",
        "The Instant Pot is in the cupboard",
        "We live in Seattle, WA 98101",
        "I don't use WhatsApp, this chat is fine",
        "I'd rather pay through the app than Venmo",
        "could you send pix of the kitchen?",
        "Details at example-market.com/help and https://www.example-market.com/rooms/123456",
        "the help centre at support@example-market.com answered fast",
        "Drop me a line here if anything breaks",
        "let's keep everything in this thread for the record",
        "tap the call button in the app when you arrive",
        "dial reception from the phone by the bed",
        "for emergencies ring 112",
        "ok. me too, great. net result is fine",
    ] {
        assert_clean(t);
    }
}

#[test]
fn spans_point_at_the_detail() {
    let text = "Hi! Call me on ０７７００ ９００１２３ thanks";
    let a = detector().analyze(text);
    let d = a.detections.iter().find(|d| d.kind == ContactKind::Phone);
    let Some(d) = d else {
        panic!("no phone in {a:?}")
    };
    assert_eq!(&text[d.start..d.end], "０７７００ ９００１２３");
    assert!(d.obfuscated);
    assert_eq!(a.risk, Risk::High);
    assert_eq!(
        mask(text, &a.detections, "[contact hidden]"),
        "Hi! Call me on [contact hidden] thanks"
    );
}

#[test]
fn plain_detail_is_not_marked_obfuscated() {
    let a = detector().analyze("write to ruben.ortiz@gmail.com");
    assert_eq!(a.detections.len(), 1, "{a:?}");
    assert!(!a.detections[0].obfuscated);
}

#[test]
fn split_across_messages() {
    let d = detector();
    let a = d.analyze_with_history("4478", &["call me", "555 201"]);
    let phone = a.detections.iter().find(|d| d.kind == ContactKind::Phone);
    let Some(phone) = phone else {
        panic!("no phone in {a:?}")
    };
    assert_eq!((phone.start, phone.end), (0, 4));
    assert!(!d.analyze("4478").has_contact);
    assert!(
        !d.analyze_with_history("see you at 5", &["call me", "555 201"])
            .has_contact
    );
}

#[test]
fn listing_context_is_excluded() {
    let d = detector();
    let listing =
        "Cozy loft, 1200 Harbor Road, Unit 3, Springfield 62704 (front desk +1 217 555 0100)";
    let text = "Is the front desk number +1 217 555 0100 open at night?";
    assert!(d.analyze(text).has_contact);
    assert!(!d.analyze_with_context(text, &[], Some(listing)).has_contact);
}

#[test]
fn mask_merges_overlapping_spans_and_ignores_bad_ones() {
    let text = "abc def ghi";
    let ds = [
        Detection {
            kind: ContactKind::Url,
            start: 0,
            end: 5,
            confidence: 1.0,
            obfuscated: false,
        },
        Detection {
            kind: ContactKind::Url,
            start: 4,
            end: 7,
            confidence: 1.0,
            obfuscated: false,
        },
        Detection {
            kind: ContactKind::Url,
            start: 9,
            end: 99,
            confidence: 1.0,
            obfuscated: false,
        },
    ];
    assert_eq!(mask(text, &ds, "#"), "# ghi");
    assert_eq!(
        mask(
            "héllo",
            &[Detection {
                kind: ContactKind::Url,
                start: 2,
                end: 3,
                confidence: 1.0,
                obfuscated: false
            }],
            "#"
        ),
        "héllo"
    );
}

#[test]
fn jsonl_round_trip_and_errors() {
    let input = concat!(
        "{\"id\":\"a\",\"text\":\"call 512-555-0199\"}\n",
        "{\"id\":\"b\",\"text\":\"hello there\"}\n",
        "{\"id\":\"c\",\"txt\":\"missing text\"}\n",
        "{\"id\": \"d\", \"text\": broken\n",
        "\n",
        "{\"id\":7,\"text\":\"4478\",\"history\":[\"call me\",\"555 201\"]}\n",
    );
    let mut out = Vec::new();
    let result = detect_jsonl(detector(), None, input.as_bytes(), &mut out);
    assert!(result.is_ok());
    let text = String::from_utf8(out).unwrap_or_default();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(lines[0]["id"], "a");
    assert_eq!(lines[0]["has_contact"], true);
    assert_eq!(lines[0]["risk"], "high");
    assert_eq!(lines[0]["detections"][0]["type"], "phone");
    assert_eq!(lines[1]["has_contact"], false);
    assert_eq!(lines[1]["risk"], "none");
    assert_eq!(lines[2]["id"], "c");
    assert!(lines[2]["error"].is_string());
    assert_eq!(lines[3]["id"], "d");
    assert!(lines[3]["error"].is_string());
    assert_eq!(lines[4]["id"], 7);
    assert_eq!(lines[4]["has_contact"], true);
    assert!(lines[0].get("action").is_none(), "no policy, no action");
}

#[test]
fn jsonl_with_a_policy_reports_the_phase_action() {
    let policy = ContactPolicy::from_yaml(include_str!("../../rules/contact.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let input = "{\"id\":\"a\",\"text\":\"call 512-555-0199\"}\n";
    for (phase, expected) in [("pre_booking", "block"), ("post_booking", "mask")] {
        let mut out = Vec::new();
        detect_jsonl(
            detector(),
            Some((&policy, phase)),
            input.as_bytes(),
            &mut out,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let line: serde_json::Value =
            serde_json::from_slice(&out).unwrap_or(serde_json::Value::Null);
        assert_eq!(line["action"], expected, "{phase}");
    }
}

#[test]
fn detector_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Detector>();
}

#[test]
fn hostile_inputs_do_not_panic() {
    let d = detector();
    let digits = "9".repeat(100_000);
    let combining = format!("a{}", "\u{0301}".repeat(10_000));
    let keycaps = "1\u{FE0F}\u{20E3}".repeat(5_000);
    for t in [
        digits.as_str(),
        combining.as_str(),
        keycaps.as_str(),
        "",
        "\u{0}",
        "@",
        "$",
        "+",
        "dot dot dot at at",
    ] {
        let a = d.analyze(t);
        for det in &a.detections {
            assert!(
                t.is_char_boundary(det.start) && t.is_char_boundary(det.end) && det.start < det.end
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn spans_are_valid_for_any_text(text in "\\PC{0,200}", history in proptest::collection::vec("\\PC{0,40}", 0..3)) {
        let d = detector();
        let refs: Vec<&str> = history.iter().map(String::as_str).collect();
        let a = d.analyze_with_history(&text, &refs);
        prop_assert_eq!(a.has_contact, !a.detections.is_empty());
        for det in &a.detections {
            prop_assert!(det.start < det.end && det.end <= text.len());
            prop_assert!(text.is_char_boundary(det.start) && text.is_char_boundary(det.end));
        }
        let masked = mask(&text, &a.detections, "[x]");
        prop_assert!(masked.len() <= text.len() + 3 * a.detections.len());
    }

    #[test]
    fn contact_like_text_never_panics(text in "[0-9a-z@$.:/ ()\\-+＠０-９①-⑨]{0,120}") {
        let a = detector().analyze(&text);
        for det in &a.detections {
            prop_assert!(text.is_char_boundary(det.start) && text.is_char_boundary(det.end));
        }
    }
}

#[test]
fn one_message_can_carry_several_kinds() {
    let k = kinds("WhatsApp me on +44 7911 123456 or jane.doe88@gmail.com");
    for want in [
        ContactKind::MessagingApp,
        ContactKind::Phone,
        ContactKind::Email,
    ] {
        assert!(k.contains(&want), "{want:?} missing from {k:?}");
    }
    let k = kinds("zelle me at 512-555-0199");
    assert!(
        k.contains(&ContactKind::Payment) && k.contains(&ContactKind::Phone),
        "{k:?}"
    );
}
