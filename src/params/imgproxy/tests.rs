use std::collections::BTreeMap;

use super::*;
use crate::params::{canonical, parse_presets, ModelChoice};

fn syntax() -> Syntax {
    Syntax::new([("default", "file://samples"), ("shop", "s3://shop-bucket/images/"), ("cdn", "https://cdn.example.com")], false)
}

fn limits_with(presets: &[(&str, &str)]) -> ParamLimits {
    let raw: BTreeMap<String, String> = presets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let base = ParamLimits::default();
    ParamLimits { presets: parse_presets(&raw, &base).unwrap(), ..base }
}

fn p(rest: &str) -> Result<Request, ParamError> {
    parse(rest, &syntax(), &ParamLimits::default())
}

fn spec(rest: &str) -> TransformSpec {
    p(rest).unwrap().path.spec
}

#[test]
fn recognises_imgproxy_paths_and_leaves_upres_paths_alone() {
    assert_eq!(recognise("/insecure/rs:fit:300/plain/cat.jpg", false), Some("/rs:fit:300/plain/cat.jpg"));
    assert_eq!(recognise("/_/plain/cat.jpg@png", false), Some("/plain/cat.jpg@png"));
    let b64 = URL_SAFE_NO_PAD.encode("local:///cat.jpg");
    assert_eq!(recognise(&format!("/unsafe/{b64}.png"), false), Some(&*format!("/{b64}.png")));
    assert_eq!(recognise("/rs:fill:10:10/plain/cat.jpg", true), Some("/rs:fill:10:10/plain/cat.jpg"));
    // upres's own syntax, signed or not.
    for native in ["/w=300/cat.jpg", "/x4/cat.jpg", "/cat.jpg", "/-/plain/cat.jpg", "/shop/cat.jpg", "/x2/prompt=a:b/c.jpg"] {
        assert_eq!(recognise(native, false), None, "{native}");
    }
    for native in ["/w=300/cat.jpg", "/x4/cat.jpg", "/cat.jpg", "/prompt=a:b/c.jpg", "/-/plain/x.jpg"] {
        assert_eq!(recognise(native, true), None, "{native}");
    }
}

#[test]
fn resize_meta_option_and_its_short_forms() {
    let s = spec("/rs:fill:300:200/plain/cat.jpg");
    assert_eq!((s.width, s.height, s.fit), (Some(300), Some(200), Some(Fit::Cover)));
    let s = spec("/resize:force:300:200:1/plain/cat.jpg");
    assert_eq!(s.fit, Some(Fit::Fill));
    let s = spec("/s:300:200/rt:fill-down/plain/cat.jpg");
    assert_eq!(s.fit, Some(Fit::Cover));
    let s = spec("/w:300/h:0/plain/cat.jpg");
    assert_eq!((s.width, s.height), (Some(300), None));
    // Empty arguments keep the defaults (or what an earlier option set).
    let s = spec("/w:500/rs::300/plain/cat.jpg");
    assert_eq!((s.width, s.fit), (Some(300), Some(Fit::Inside)));
    let s = spec("/w:500/rs:fit::200/plain/cat.jpg");
    assert_eq!((s.width, s.height), (Some(500), Some(200)));
}

#[test]
fn without_enlarge_the_output_never_grows_and_enlarge_lets_the_model_fill_the_box() {
    assert_eq!(spec("/rs:fit:300:300/plain/cat.jpg").fit, Some(Fit::Inside));
    assert_eq!(spec("/rs:fit:300:300:1/plain/cat.jpg").fit, None);
    assert_eq!(spec("/rs:fit:300:300/el:t/plain/cat.jpg").fit, None);
    let s = spec("/w:800/us:realesrgan/plain/cat.jpg");
    assert_eq!((s.fit, s.model.clone()), (None, ModelChoice::Named("realesrgan".into())));
    let s = spec("/w:800/el:1/prompt:a%20cat:%20sitting/steps:5/seed:7/noise:30/guidance:7.5/plain/cat.jpg");
    assert_eq!(s.prompt.as_deref(), Some("a cat: sitting"));
    assert_eq!((s.steps, s.seed, s.noise_level, s.guidance), (Some(5), Some(7), Some(30), Some(7.5)));
}

#[test]
fn both_syntaxes_share_the_canonical_spec() {
    let upres = crate::params::parse("/w=300/cat.jpg", &ParamLimits::default()).unwrap();
    let imgproxy = p("/w:300/el:1/plain/cat.jpg").unwrap().path;
    assert_eq!(canonical(&upres.spec), canonical(&imgproxy.spec));
    assert_eq!(upres.source, imgproxy.source);
    let upres = crate::params::parse("/w=300/h=200/fit=cover/gravity=north/format=webp/q=70/cat.jpg", &ParamLimits::default()).unwrap();
    let imgproxy = p("/rs:fill:300:200/g:no/q:70/plain/local:///cat.jpg@webp").unwrap().path;
    assert_eq!(canonical(&upres.spec), canonical(&imgproxy.spec));
    assert_eq!(upres.source, imgproxy.source);
    // Smart crops: one canonical form in both syntaxes, different from the centre crop's.
    let upres = crate::params::parse("/w=300/h=200/fit=cover/gravity=smart/cat.jpg", &ParamLimits::default()).unwrap();
    let imgproxy = p("/rs:fill:300:200/g:sm/plain/local:///cat.jpg").unwrap().path;
    assert_eq!(canonical(&upres.spec), canonical(&imgproxy.spec));
    let centre = p("/rs:fill:300:200/g:ce/plain/local:///cat.jpg").unwrap().path;
    assert_ne!(canonical(&centre.spec), canonical(&imgproxy.spec));
    assert!(canonical(&imgproxy.spec).contains("gravity=smart"), "{}", canonical(&imgproxy.spec));
}

#[test]
fn sources_map_onto_named_origins_only() {
    let b64 = URL_SAFE_NO_PAD.encode("s3://shop-bucket/images/a/cat.jpg");
    let (head, tail) = b64.split_at(7);
    let r = p(&format!("/w:10/{head}/{tail}.png")).unwrap();
    assert_eq!((r.path.spec.origin.as_deref(), r.path.source.as_str()), (Some("shop"), "a/cat.jpg"));
    assert_eq!(r.path.spec.format, Format::Png);
    let r = p("/plain/https%3A%2F%2Fcdn.example.com%2Fx%2Fy.jpg@jpg").unwrap();
    assert_eq!((r.path.spec.origin.as_deref(), r.path.source.as_str()), (Some("cdn"), "x/y.jpg"));
    let r = p("/plain/file://samples/cat.jpg").unwrap();
    assert_eq!((r.path.spec.origin, r.path.source.as_str()), (None, "cat.jpg"));
    // No open proxy: anything else is refused.
    for bad in ["/plain/https://evil.example/cat.jpg", "/plain/https://cdn.example.com.evil/x.jpg", "/plain/s3://shop-bucket/imagesX/a.jpg"] {
        assert!(matches!(p(bad), Err(ParamError::BadSource(_))), "{bad}");
    }
    assert_eq!(p("/plain/local:///a/../b.jpg").unwrap_err(), ParamError::DotSegment);
    assert_eq!(p("/rs:fit:10").unwrap_err(), ParamError::MissingSource);
    assert!(matches!(p("/enc/abcd").unwrap_err(), ParamError::Unsupported(_)));
}

#[test]
fn formats_from_option_and_extension() {
    assert_eq!(spec("/f:webp/plain/cat.jpg").format, Format::Webp);
    assert_eq!(spec("/ext:jpg/plain/cat.png").format, Format::Jpeg);
    // The extension wins over the option, as in imgproxy.
    assert_eq!(spec("/format:webp/plain/cat.jpg@png").format, Format::Png);
    assert_eq!(spec("/plain/cat.jpg").format, Format::Auto);
    assert_eq!(spec("/plain/cat.jpg@avif").format, Format::Avif);
    assert_eq!(spec("/f:avif/plain/cat.jpg").format, Format::Avif);
    assert_eq!(p("/plain/cat.jpg@heic").unwrap_err(), ParamError::Unsupported("format:heic".into()));
    assert!(matches!(p("/f:nope/plain/cat.jpg").unwrap_err(), ParamError::Invalid { name: "format", .. }));
}

#[test]
fn quality_zoom_dpr_gravity() {
    assert_eq!(spec("/q:0/plain/c.jpg").quality, None);
    assert_eq!(spec("/quality:55/plain/c.jpg").quality, Some(55));
    assert!(matches!(p("/q:101/plain/c.jpg").unwrap_err(), ParamError::Invalid { name: "q", .. }));
    let s = spec("/w:100/h:50/z:1.5/plain/c.jpg");
    assert_eq!((s.width, s.height), (Some(150), Some(75)));
    let s = spec("/w:100/h:50/zoom:2:3/plain/c.jpg");
    assert_eq!((s.width, s.height), (Some(200), Some(150)));
    assert_eq!(spec("/z:2/plain/c.jpg").scale, Some(2));
    assert!(matches!(p("/z:0.5/plain/c.jpg").unwrap_err(), ParamError::Invalid { name: "zoom", .. }));
    assert_eq!(spec("/w:100/dpr:2/plain/c.jpg").dpr, Some(2.0));
    assert_eq!(spec("/w:100/dpr:1/plain/c.jpg").dpr, None);
    assert!(matches!(p("/dpr:0/plain/c.jpg").unwrap_err(), ParamError::Invalid { name: "dpr", .. }));
    for (g, want) in [("no", Gravity::North), ("sowe", Gravity::SouthWest), ("ea:0:0", Gravity::East), ("sm", Gravity::Smart)] {
        assert_eq!(spec(&format!("/g:{g}/plain/c.jpg")).gravity, Some(want));
    }
    assert_eq!(spec("/g:ce/plain/c.jpg").gravity, None);
    assert_eq!(p("/g:no:10:0/plain/c.jpg").unwrap_err(), ParamError::Unsupported("gravity offsets".into()));
}

#[test]
fn unsupported_options_name_themselves_unless_ignored() {
    for (url, name) in [
        ("/bl:5/plain/c.jpg", "bl"),
        ("/mw:300/plain/c.jpg", "mw"),
        ("/c:100:100/plain/c.jpg", "crop"),
        ("/bg:ff0000/plain/c.jpg", "background"),
        ("/rs:fit:100:100:0:1/plain/c.jpg", "extend"),
        ("/rt:auto/plain/c.jpg", "resizing_type:auto"),
    ] {
        let e = p(url).unwrap_err();
        assert_eq!(e, ParamError::Unsupported(name.into()), "{url}");
        assert!(e.to_string().contains(name));
        let lenient = Syntax { ignore_unsupported: true, ..syntax() };
        assert!(parse(url, &lenient, &ParamLimits::default()).is_ok(), "{url}");
    }
    // Unknown names are not imgproxy options at all: always 400.
    assert_eq!(p("/nope:1/plain/c.jpg").unwrap_err(), ParamError::Unknown("nope".into()));
    assert!(matches!(p("/w:1:2/plain/c.jpg").unwrap_err(), ParamError::Invalid { name: "width", .. }));
    assert!(matches!(p("/el:maybe/plain/c.jpg").unwrap_err(), ParamError::Invalid { name: "enlarge", .. }));
    // Accepted no-ops.
    assert!(p("/cb:123/c:0:0/bg:/plain/c.jpg").is_ok());
}

#[test]
fn presets_apply_where_they_appear_and_default_applies_first() {
    let limits = limits_with(&[("thumb", "w=300/h=300/fit=cover"), ("default", "q=70")]);
    let s = parse("/pr:thumb/plain/c.jpg", &syntax(), &limits).unwrap().path.spec;
    assert_eq!((s.width, s.height, s.fit, s.quality), (Some(300), Some(300), Some(Fit::Cover), Some(70)));
    let s = parse("/pr:thumb/w:100/q:90/plain/c.jpg", &syntax(), &limits).unwrap().path.spec;
    assert_eq!((s.width, s.quality), (Some(100), Some(90)));
    assert_eq!(
        parse("/preset:nope/plain/c.jpg", &syntax(), &limits).unwrap_err(),
        ParamError::UnknownPreset("nope".into())
    );
    // The same preset through upres's syntax gives the same spec.
    let native = crate::params::parse("/preset=thumb/cat.jpg", &limits).unwrap();
    let via = parse("/preset:thumb/plain/cat.jpg", &syntax(), &limits).unwrap().path;
    assert_eq!(canonical(&native.spec), canonical(&via.spec));
}

#[test]
fn filename_and_attachment_become_a_disposition() {
    let r = p("/fn:my%20cat/att:1/plain/c.jpg").unwrap();
    let d = r.disposition.unwrap();
    assert_eq!(d.header_value("c", "webp"), "attachment; filename=\"my cat.webp\"");
    let enc = URL_SAFE_NO_PAD.encode("k\"tty");
    let d = p(&format!("/filename:{enc}:1/plain/c.jpg")).unwrap().disposition.unwrap();
    assert_eq!(d.header_value("c", "png"), "inline; filename=\"k_tty.png\"");
    assert_eq!(p("/w:1/plain/c.jpg").unwrap().disposition, None);
}
