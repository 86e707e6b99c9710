//! Contact-detection throughput.
//!
//! `realistic`: a mix of typical marketplace messages (mostly clean, some with
//! contact details), reported as messages/s on one thread.
//! `adversarial`: hostile inputs, reported as bytes/s; the target is at most
//! 1 ms per KB (>= 1 MB/s).
//!
//! Run: `cargo bench --bench contact`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use parleyd::contact::{Detector, DetectorConfig};

const REALISTIC: &[&str] = &[
    "Hi! Is the cottage still available for the long weekend? We'd be two adults and a toddler.",
    "Thanks so much, we had a wonderful stay. The kids loved the garden and the hammock.",
    "Could we check in a bit earlier, around 1pm? Our train gets in at 12:15.",
    "The total came to $1,284.50 including the cleaning fee, is that right?",
    "Sure, the parking spot is number 14 in the underground garage, level -1.",
    "I left the keys in the lockbox, code is 4471. Safe travels home!",
    "Do you allow dogs? Ours is a very calm 9 year old beagle, about 25 lb.",
    "Booking HX7-221-904 shows 3 guests but we are 4 now, can you update it?",
    "Hola, ¿el apartamento tiene aire acondicionado? Llegamos el 12/08 a las 18:00.",
    "Bonjour, est-ce qu'il y a un parking à proximité ? Merci beaucoup !",
    "Hallo, gibt es WLAN in der Wohnung? Wir kommen am Freitag gegen 20 Uhr an.",
    "Oi! A casa tem churrasqueira? Somos dois casais e uma criança de 5 anos.",
    "The wifi network is GardenFlat_5G and the password is sunflower2024.",
    "Your place is rated 4.9 for a reason, see you in October :)",
    "Tracking number 1Z 999 AA1 01 2345 6784, should arrive Thursday.",
    "Can you do $90 a night if we stay the full two weeks? That's 14 nights.",
    "My phone is almost dead, I'll reply properly tonight when I'm back at the hotel.",
    "Please send a few more photos of the kitchen here when you get a chance 🙏",
    "We're @ the museum till 5, back after. Leaving the bags at reception.",
    "The desk is 140 x 70 cm and weighs about 30 kg, fits in a hatchback.",
    "Text me at 415-555-0123 when you arrive and I'll come down.",
    "Can you WhatsApp me? This app keeps logging me out.",
    "my email is jane.doe88 at gmail dot com, send the invoice there",
    "Follow me on insta @janes.kitchen for more photos of the place",
    "Cheaper for both of us if you pay with Venmo, @Jane-Doe-22",
    "call me: seven one eight, five five five, zero one nine nine",
    "Book direct at sunnyloft dot com and save the service fee!",
    "Confirmation no. 4417 229 013, can you double-check the dates?",
    "I sent the request through example-market.com/trips, did it arrive?",
    "The sofa bed is comfy but the reading lamp in the hall flickers a little.",
];

fn adversarial() -> Vec<(&'static str, String)> {
    let kb100 = 100 * 1024;
    vec![
        ("digits", "9".repeat(kb100)),
        ("spaced_digits", "1 ".repeat(kb100 / 2)),
        ("number_words", "one two three ".repeat(kb100 / 14)),
        ("combining", format!("a{}", "\u{0301}".repeat(kb100 / 2))),
        ("keycaps", "1\u{FE0F}\u{20E3}".repeat(kb100 / 7)),
        ("at_dot_words", "jane at gmail dot ".repeat(kb100 / 18)),
        ("dotted_labels", "ab.".repeat(kb100 / 3)),
        ("at_signs", "a@".repeat(kb100 / 2)),
        ("spaced_letters", "a b ".repeat(kb100 / 4)),
        ("app_names", "whats app insta zelle ".repeat(kb100 / 22)),
        ("emoji_digits", "5❤️".repeat(kb100 / 8)),
        ("cashtags", "$abc ".repeat(kb100 / 5)),
        ("fullwidth", "５＠．".repeat(kb100 / 9)),
        ("dashed_digits", "1-".repeat(kb100 / 2)),
        ("one_long_word", "a".repeat(kb100)),
        ("bracket_dots", "x(.)".repeat(kb100 / 4)),
        ("chat_log", REALISTIC.join("\n").repeat(kb100 / 2200)),
    ]
}

fn bench(c: &mut Criterion) {
    let detector = Detector::new(&DetectorConfig::default());

    let mut group = c.benchmark_group("realistic");
    group.throughput(Throughput::Elements(REALISTIC.len() as u64));
    group.bench_function("mixed_messages", |b| {
        b.iter(|| {
            for m in REALISTIC {
                black_box(detector.analyze(black_box(m)));
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("adversarial_100kb");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    for (name, input) in adversarial() {
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &input, |b, input| {
            b.iter(|| black_box(detector.analyze(black_box(input))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
