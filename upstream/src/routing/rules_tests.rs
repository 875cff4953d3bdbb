use super::*;
use crate::media::types::{Background, Quality};
use crate::routing::chain::{BreakerPolicy, RetryPolicy};

fn args<'a>(prompt: &'a str, style: Style, size: &str, n: u8) -> Asked<'a> {
    Asked {
        prompt,
        style,
        size: ImageSize::parse(size).unwrap(),
        n,
        quality: Quality::Auto,
        background: Background::Auto,
        model: None,
    }
}

const DEFAULT_CHAIN: [&str; 2] = ["openai:gpt-image-2", "openai:gpt-image-1.5"];

fn routes(json: serde_json::Value) -> Routes {
    let spec: RoutesSpec = serde_json::from_value(json).unwrap();
    spec.validate().unwrap();
    Routes::new(spec, DEFAULT_CHAIN.map(String::from).to_vec(), |_| {
        Ok(ModelRouter::new(
            Vec::new(),
            RetryPolicy::default(),
            BreakerPolicy::default(),
        ))
    })
    .unwrap()
}

fn facts<'a>(org: &'a str, tool: &'a str, asked: &Asked<'a>) -> CallFacts<'a> {
    CallFacts {
        org,
        user: "alice",
        tool,
        asked: *asked,
    }
}

fn why(r: &Routes, org: &str, a: &Asked<'_>) -> Option<String> {
    r.select(&facts(org, "generate_image", a)).unwrap().map(|s| s.why)
}

#[test]
fn rules_then_org_then_style_then_default() {
    let r = routes(serde_json::json!({
        "styles": {"anime": ["stability:sd3.5-large"]},
        "orgs": {"onprem": ["openai-compatible:sd"]},
        "rules": [
            {"min_prompt_chars": 100, "route": ["gpt-image-2"]},
            {"sizes": ["3840x2160"], "styles": ["photorealistic"], "route": ["gpt-image-2", "gpt-image-1.5"]}
        ]
    }));
    let long = "x".repeat(100);
    assert_eq!(
        why(&r, "acme", &args(&long, Style::Anime, "1024x1024", 1)).as_deref(),
        Some("rule 0")
    );
    assert_eq!(
        why(&r, "onprem", &args("x", Style::Photorealistic, "3840x2160", 1)).as_deref(),
        Some("rule 1")
    );
    assert_eq!(
        why(&r, "onprem", &args("x", Style::Anime, "1024x1024", 1)).as_deref(),
        Some("org onprem")
    );
    assert_eq!(
        why(&r, "acme", &args("x", Style::Anime, "1024x1024", 1)).as_deref(),
        Some("style anime")
    );
    assert_eq!(why(&r, "acme", &args("x", Style::Default, "1024x1024", 1)), None);
    // Rule 1 needs both its size and its style.
    assert_eq!(why(&r, "acme", &args("x", Style::Default, "3840x2160", 1)), None);
    assert_eq!(r.describe()[1].0, "rule 1: size 3840x2160, style photorealistic");
}

#[test]
fn content_rules_match_keywords_and_patterns_case_insensitively() {
    let r = routes(serde_json::json!({
        "rules": [
            {"prompt_keywords": ["logo", "Typography"], "prompt_patterns": ["\\bsays? \"[^\"]+\""], "route": ["gpt-image-2"]},
            {"tools": ["edit_image"], "qualities": ["high"], "route": ["gpt-image-1.5"]},
            {"backgrounds": ["transparent"], "route": ["gpt-image-1.5"]}
        ],
        "default": ["openai-compatible:sdxl"]
    }));
    let rule = |prompt: &str| why(&r, "acme", &args(prompt, Style::Default, "1024x1024", 1));
    let cases = [
        ("a LOGO for a bakery", "rule 0"),
        ("bold typography on a poster", "rule 0"),
        ("a sign that says \"open late\"", "rule 0"),
        ("a catalogue of logos", "rule 0"),
        ("a quiet harbour", "default"),
        ("a sign", "default"),
    ];
    for (prompt, expected) in cases {
        assert_eq!(rule(prompt).as_deref(), Some(expected), "{prompt}");
    }
    let mut high = args("x", Style::Default, "1024x1024", 1);
    high.quality = Quality::High;
    assert_eq!(
        r.select(&facts("acme", "edit_image", &high)).unwrap().unwrap().why,
        "rule 1"
    );
    assert_eq!(
        r.select(&facts("acme", "generate_image", &high)).unwrap().unwrap().why,
        "default"
    );
    let mut clear = args("x", Style::Default, "1024x1024", 1);
    clear.background = Background::Transparent;
    assert_eq!(why(&r, "acme", &clear).as_deref(), Some("rule 2"));
    assert_eq!(
        r.describe()[0].0,
        "rule 0: prompt mentioning \"logo\" or \"Typography\" or /\\bsays? \"[^\"]+\"/"
    );
}

#[test]
fn arms_are_stable_per_user_and_split_near_their_weights() {
    let r = routes(serde_json::json!({
        "default": {"assign_by": "user", "arms": [
            {"name": "onprem", "weight": 90, "models": ["openai-compatible:sdxl"]},
            {"name": "hosted", "weight": 10, "models": ["gpt-image-1-mini"], "strategy": "cheapest"}
        ]}
    }));
    let a = args("x", Style::Default, "1024x1024", 1);
    let arm_of = |user: &str| {
        let facts = CallFacts {
            org: "acme",
            user,
            tool: "generate_image",
            asked: a,
        };
        r.select(&facts).unwrap().unwrap()
    };
    for user in ["u1", "u2", "u3"] {
        let first = arm_of(user).arm;
        assert!((0..20).all(|_| arm_of(user).arm == first), "{user} stays on one arm");
    }
    let hosted = (0..10_000)
        .filter(|i| arm_of(&format!("user-{i}")).arm.as_deref() == Some("hosted"))
        .count();
    assert!((850..1150).contains(&hosted), "about 10 % on hosted: {hosted}");
    let selected = (0..200)
        .map(|i| arm_of(&format!("user-{i}")))
        .find(|s| s.arm.as_deref() == Some("hosted"))
        .unwrap();
    assert_eq!(selected.strategy, Strategy::Cheapest);
    // By organisation: every user of one org on one arm.
    let by_org = routes(serde_json::json!({"default": {"assign_by": "org", "arms": [
        {"name": "a", "weight": 50, "models": ["m1"]}, {"name": "b", "weight": 50, "models": ["m2"]}]}}));
    let arms: std::collections::BTreeSet<_> = (0..50)
        .map(|i| {
            let user = format!("u{i}");
            by_org
                .select(&CallFacts {
                    org: "acme",
                    user: &user,
                    tool: "generate_image",
                    asked: a,
                })
                .unwrap()
                .unwrap()
                .arm
        })
        .collect();
    assert_eq!(arms.len(), 1);
}

#[test]
fn callers_choose_only_what_their_organisation_may() {
    let r = routes(serde_json::json!({
        "selectable": {"default": ["gpt-image-1-mini"], "orgs": {"acme": ["gpt-image-2", "stability:sd3.5-large"]}}
    }));
    let mut a = args("x", Style::Default, "1024x1024", 1);
    a.model = Some("sd3.5-large");
    let chosen = r.select(&facts("acme", "generate_image", &a)).unwrap().unwrap();
    assert_eq!(
        (chosen.why.as_str(), chosen.requested.as_deref()),
        ("model", Some("sd3.5-large"))
    );
    let refused = r.select(&facts("globex", "generate_image", &a)).err().unwrap();
    assert!(refused.contains("gpt-image-1-mini"), "{refused}");
    assert_eq!(r.selectable("acme"), ["gpt-image-2", "sd3.5-large"]);
    assert_eq!(r.selectable("globex"), ["gpt-image-1-mini"]);
    // Without a list, the built-in chain's models are the choice.
    let plain = Routes::none(DEFAULT_CHAIN.map(String::from).to_vec());
    assert_eq!(plain.selectable("acme"), ["gpt-image-2", "gpt-image-1.5"]);
}

#[test]
fn a_bad_routes_file_is_refused_naming_the_field() {
    let cases = [
        (
            serde_json::json!({"styles": {"cubism": ["m"]}}),
            "`styles.cubism`: unknown style",
        ),
        (
            serde_json::json!({"orgs": {"acme": []}}),
            "`orgs.acme`: the chain is empty",
        ),
        (
            serde_json::json!({"rules": [{"sizes": ["big"], "route": ["m"]}]}),
            "`rules[0].sizes`",
        ),
        (
            serde_json::json!({"rules": [{"route": []}]}),
            "`rules[0].route`: the chain is empty",
        ),
        (
            serde_json::json!({"rules": [{"prompt_patterns": ["(unclosed"], "route": ["m"]}]}),
            "does not compile",
        ),
        (
            serde_json::json!({"rules": [{"prompt_patterns": ["a".repeat(300)], "route": ["m"]}]}),
            "longer than 256",
        ),
        (
            serde_json::json!({"default": {"arms": [{"name": "a", "weight": 0, "models": ["m"]}]}}),
            "add up to 0",
        ),
        (
            serde_json::json!({"default": {"arms": [{"name": "a", "weight": 1, "models": ["m"]},
                                                     {"name": "a", "weight": 1, "models": ["n"]}]}}),
            "a name of its own",
        ),
    ];
    for (json, expected) in cases {
        let spec: RoutesSpec = serde_json::from_value(json).unwrap();
        let error = spec.validate().unwrap_err();
        assert!(error.contains(expected), "{error}");
    }
    assert!(serde_json::from_value::<RoutesSpec>(serde_json::json!({"rules": [{"route": ["m"], "when": 1}]})).is_err());
}
