use proptest::prelude::*;

use super::*;

fn p(path: &str) -> Result<TransformPath, ParamError> {
    parse(path, &ParamLimits::default())
}

#[test]
fn parses_scale_options_and_source() {
    let t = p("/x4/prompt=a%20white%20cat/w=800/format=auto/shop/cat.jpg").unwrap();
    assert_eq!(t.spec.scale, Some(4));
    assert_eq!(t.spec.prompt.as_deref(), Some("a white cat"));
    assert_eq!(t.spec.width, Some(800));
    assert_eq!(t.spec.format, Format::Auto);
    assert_eq!(t.source, "shop/cat.jpg");
}

#[test]
fn dash_ends_options() {
    let t = p("/x2/-/w=1/cat.jpg").unwrap();
    assert_eq!(t.spec.scale, Some(2));
    assert_eq!(t.spec.width, None);
    assert_eq!(t.source, "w=1/cat.jpg");
}

#[test]
fn unknown_option_names_itself() {
    let e = p("/x4/zoom=3/cat.jpg").unwrap_err();
    assert_eq!(e, ParamError::Unknown("zoom".into()));
    assert!(e.to_string().contains("zoom"));
}

#[test]
fn out_of_range_values_name_the_option() {
    for (path, name) in [
        ("/x5/cat.jpg", "scale"),
        ("/x4/noise=351/cat.jpg", "noise"),
        ("/x4/steps=0/cat.jpg", "steps"),
        ("/x4/scheduler=euler/cat.jpg", "scheduler"),
        ("/x4/guidance=31/cat.jpg", "guidance"),
        ("/x4/q=0/cat.jpg", "q"),
        ("/x4/w=0/cat.jpg", "w"),
        ("/x4/dpr=5/cat.jpg", "dpr"),
        ("/x4/fit=squash/cat.jpg", "fit"),
        ("/x4/format=gif/cat.jpg", "format"),
        ("/x4/seed=-1/cat.jpg", "seed"),
        ("/x4/w=+5/cat.jpg", "w"),
        ("/x4/w=007/cat.jpg", "w"),
        ("/x4/guidance=nan/cat.jpg", "guidance"),
        ("/x4/model=Real%20ESRGAN/cat.jpg", "model"),
    ] {
        match p(path) {
            Err(ParamError::Invalid { name: n, .. }) => assert_eq!(n, name, "{path}"),
            other => panic!("{path}: expected invalid {name}, got {other:?}"),
        }
    }
}

#[test]
fn duplicate_options_are_rejected_even_through_aliases() {
    assert_eq!(p("/x4/w=1/width=2/cat.jpg").unwrap_err(), ParamError::Duplicate("w"));
    assert_eq!(p("/x4/x2/cat.jpg").unwrap_err(), ParamError::Duplicate("scale"));
}

#[test]
fn unsafe_paths_are_rejected() {
    assert_eq!(p("/x4//cat.jpg").unwrap_err(), ParamError::EmptySegment);
    assert_eq!(p("/x4/shop//cat.jpg").unwrap_err(), ParamError::EmptySegment);
    assert_eq!(p("/x4/../etc/passwd").unwrap_err(), ParamError::DotSegment);
    assert_eq!(p("/x4/shop/%2e%2e/x.jpg").unwrap_err(), ParamError::DotSegment);
    assert_eq!(p("/x4/..%2fetc%2fpasswd").unwrap_err(), ParamError::BadEncoding);
    assert_eq!(p("/x4/a%5cb.jpg").unwrap_err(), ParamError::BadEncoding);
    assert_eq!(p("/x4/a%00.jpg").unwrap_err(), ParamError::BadEncoding);
    assert_eq!(p("/x4/a%ff.jpg").unwrap_err(), ParamError::BadEncoding);
    assert_eq!(p("/x4/").unwrap_err(), ParamError::EmptySegment);
    assert_eq!(p("/x4").unwrap_err(), ParamError::MissingSource);
    let long = format!("/x4/{}", "a".repeat(9000));
    assert_eq!(p(&long).unwrap_err(), ParamError::TooLong(8192));
    assert_eq!(ParamError::TooLong(1).class(), ErrorClass::UriTooLong);
}

#[test]
fn percent_encoded_source_segments_are_decoded() {
    let t = p("/x2/my%20shop/caf%C3%A9.png").unwrap();
    assert_eq!(t.source, "my shop/café.png");
}

#[test]
fn aliases_and_order_give_one_canonical_form() {
    let a = p("/x4/format=jpg/w=800/prompt=a%20cat/cat.jpg").unwrap();
    let b = p("/w=800/f=jpeg/p=a%20cat/scale=4/cat.jpg").unwrap();
    assert_eq!(canonical(&a.spec), canonical(&b.spec));
    assert_eq!(canonical(&a.spec), "format=jpeg/prompt=a%20cat/w=800");
}

#[test]
fn explicit_defaults_and_options_without_effect_are_dropped() {
    let same = |a: &str, b: &str| assert_eq!(canonical(&p(a).unwrap().spec), canonical(&p(b).unwrap().spec), "{a} vs {b}");
    same("/x1/a.png", "/a.png");
    same("/x1/fit=contain/dpr=1/origin=default/model=auto/format=auto/a.png", "/a.png");
    same("/x4/w=300/a.png", "/w=300/a.png");
    same("/x4/w=300/fit=cover/h=200/a.png", "/w=300/h=200/fit=cover/a.png");
    same("/fit=cover/dpr=2/a.png", "/a.png");
    assert_ne!(canonical(&p("/x4/a.png").unwrap().spec), canonical(&p("/a.png").unwrap().spec), "x4 enlarges, no scale does not");
    assert_ne!(canonical(&p("/x4/w=300/fit=inside/a.png").unwrap().spec), canonical(&p("/w=300/fit=inside/a.png").unwrap().spec));
}

#[test]
fn prompts_are_not_in_debug_output() {
    let t = p("/x4/prompt=secret%20words/cat.jpg").unwrap();
    let dbg = format!("{:?}", t.spec);
    assert!(!dbg.contains("secret"), "{dbg}");
    assert!(dbg.contains("prompt_len"));
}

fn arb_spec() -> impl Strategy<Value = TransformSpec> {
    let text = proptest::option::of("[ -~éß猫]{0,20}");
    (
        (proptest::option::of(1u32..=4), proptest::option::of("[a-z0-9-]{1,12}"), text.clone(), text),
        (
            proptest::option::of(0u32..=350),
            proptest::option::of(1u32..=200),
            proptest::option::of(0u32..=300),
            proptest::option::of(any::<u64>()),
        ),
        (
            proptest::option::of(1u32..=16384),
            proptest::option::of(1u32..=16384),
            proptest::option::of(0usize..4),
            proptest::option::of(10u32..=40),
        ),
        (
            0usize..4,
            proptest::option::of(1u8..=100),
            proptest::option::of("[a-z]{1,8}|default"),
            proptest::option::of(0usize..10),
            proptest::option::of(0u8..5),
            proptest::option::of(any::<bool>()),
        ),
    )
        .prop_map(|((scale, model, prompt, neg), (noise, steps, g, seed), (w, h, fit, dpr), (fmt, q, origin, gravity, denoise, sched))| {
            TransformSpec {
                scale,
                model: match model {
                    Some(m) if m != "auto" => ModelChoice::Named(m),
                    _ => ModelChoice::Auto,
                },
                denoise: denoise.map(|d| match d {
                    0 => Denoise::Conservative,
                    1 => Denoise::None,
                    l => Denoise::Level(l - 1),
                }),
                prompt,
                negative_prompt: neg,
                noise_level: noise,
                steps,
                scheduler: sched.map(|d| if d { SchedulerKind::Dpm } else { SchedulerKind::Ddim }),
                guidance: g.map(|g| g as f32 / 10.0),
                seed,
                width: w,
                height: h,
                fit: fit.map(|i| [Fit::Contain, Fit::Cover, Fit::Fill, Fit::Inside][i]),
                gravity: gravity.map(|i| {
                    use Gravity::*;
                    [Centre, North, South, East, West, NorthEast, NorthWest, SouthEast, SouthWest, Smart][i]
                }),
                dpr: dpr.map(|d| d as f32 / 10.0),
                format: [Format::Auto, Format::Webp, Format::Jpeg, Format::Png][fmt],
                quality: q,
                origin,
            }
        })
}

proptest! {
    #[test]
    fn parse_of_canonical_is_the_normalized_spec(spec in arb_spec()) {
        let c = canonical(&spec);
        let path = if c.is_empty() { "/-/img.png".to_string() } else { format!("/{c}/-/img.png") };
        let back = p(&path).unwrap();
        prop_assert_eq!(&back.spec, &normalized(&spec));
        prop_assert_eq!(canonical(&back.spec), c);
    }

    #[test]
    fn explicit_defaults_give_the_same_canonical_form(spec in arb_spec()) {
        // Every option left unset, given its default value explicitly.
        let mut explicit = spec.clone();
        explicit.scale.get_or_insert(1);
        explicit.fit.get_or_insert(Fit::Contain);
        explicit.dpr.get_or_insert(1.0);
        explicit.origin.get_or_insert_with(|| "default".into());
        prop_assert_eq!(canonical(&explicit), canonical(&spec));
    }

    #[test]
    fn option_order_never_changes_canonical_form(spec in arb_spec(), seed in any::<u64>()) {
        let c = canonical(&spec);
        let mut segs: Vec<&str> = c.split('/').filter(|s| !s.is_empty()).collect();
        // Deterministic shuffle from the seed.
        let mut x = seed | 1;
        for i in (1..segs.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            segs.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let path = if segs.is_empty() { "/-/img.png".to_string() } else { format!("/{}/-/img.png", segs.join("/")) };
        let back = p(&path).unwrap();
        prop_assert_eq!(canonical(&back.spec), c);
    }

    #[test]
    fn arbitrary_paths_never_panic(path in "(/[a-z0-9=%.x-]{0,12}){0,8}") {
        let _ = p(&path);
    }
}

#[test]
fn readme_url_table_matches_the_option_definitions() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = defs::markdown_table();
    assert!(readme.contains(&table), "README.md's URL option table drifted; it must contain:\n{table}");
}

#[test]
fn denoise_is_in_the_canonical_form() {
    let l = ParamLimits::default();
    let p = parse("/denoise=2/model=cugan/x2/a.png", &l).unwrap();
    assert_eq!(p.spec.denoise, Some(Denoise::Level(2)));
    assert_eq!(canonical(&p.spec), "denoise=2/model=cugan/scale=2");
    let none = parse("/model=cugan/denoise=0/a.png", &l).unwrap();
    assert_eq!(canonical(&none.spec), "denoise=none/model=cugan");
    assert_ne!(canonical(&p.spec), canonical(&parse("/model=cugan/x2/a.png", &l).unwrap().spec));
    let e = parse("/denoise=4/a.png", &l).unwrap_err();
    assert!(e.to_string().contains("`denoise`"), "{e}");
}

#[test]
fn limits_from_the_config_bound_paths_and_prompts_and_expand_presets() {
    let mut cfg = crate::config::Config::default();
    cfg.server.max_path_bytes = 40;
    cfg.limits.max_prompt_bytes = 4;
    cfg.presets.insert("thumb".into(), "w=300/h=300".into());
    let limits = ParamLimits::from_config(&cfg).unwrap();
    assert_eq!((limits.max_path_bytes, limits.max_prompt_bytes), (40, 4));
    assert_eq!(limits.max_dimension, ParamLimits::default().max_dimension);
    assert_eq!(limits.presets["thumb"].width, Some(300));
    assert_eq!(parse(&format!("/w=1/{}.jpg", "a".repeat(40)), &limits).unwrap_err(), ParamError::TooLong(40));
    assert!(parse("/prompt=kitten/cat.jpg", &limits).is_err(), "a 6-byte prompt passes a 4-byte limit");
    cfg.presets.insert("bad".into(), "w=banana".into());
    assert!(ParamLimits::from_config(&cfg).unwrap_err().contains("preset `bad`"));
}
