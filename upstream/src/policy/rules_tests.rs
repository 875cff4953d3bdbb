use super::*;

fn policies(json: serde_json::Value) -> Result<ContentPolicies, String> {
    let spec: PolicyFileSpec = serde_json::from_value(json).map_err(|e| e.to_string())?;
    ContentPolicies::new(&spec)
}

fn verdict(flagged: &[(&str, f64)], others: &[(&str, f64)]) -> ModerationResult {
    let mut result = ModerationResult {
        flagged: !flagged.is_empty(),
        ..Default::default()
    };
    for (category, score) in flagged {
        result.categories.insert(category.to_string(), true);
        result.category_scores.insert(category.to_string(), *score);
    }
    for (category, score) in others {
        result.categories.insert(category.to_string(), false);
        result.category_scores.insert(category.to_string(), *score);
    }
    result
}

#[test]
fn organisations_inherit_the_default_and_replace_what_they_name() {
    let p = policies(serde_json::json!({
        "default": {"deny_terms": {"weapons": ["bazooka"]}, "moderation": "prompts"},
        "orgs": {"kids": {"moderation": "prompts_and_images", "when_moderation_unavailable": "refuse"},
                 "design": {"deny_terms": {}, "moderation": "off"}}
    }))
    .unwrap();
    let kids = p.for_org("kids");
    assert_eq!(kids.source, "orgs.kids");
    assert_eq!(kids.denied_term("a Bazooka"), Some("weapons"));
    assert!(kids.moderates_images_of("any-model"));
    let design = p.for_org("design");
    assert_eq!(design.denied_term("a bazooka"), None);
    assert!(design.is_off());
    let other = p.for_org("someone-else");
    assert_eq!(other.source, "default");
    assert!(other.moderates_prompts() && !other.moderates_images_of("m"));
    assert_eq!(other.when_unavailable, Unavailable::Refuse);
}

#[test]
fn no_file_checks_nothing() {
    assert!(ContentPolicies::none().for_org("any").is_off());
}

#[test]
fn image_moderation_can_be_limited_to_some_models() {
    let p = policies(serde_json::json!({"default": {"moderation": "prompts_and_images",
        "image_moderation_models": ["stablediffusion"]}}))
    .unwrap();
    let policy = p.for_org("x");
    assert!(policy.moderates_images_of("stablediffusion"));
    assert!(!policy.moderates_images_of("gpt-image-2"));
    let every = policies(serde_json::json!({"default": {"moderation": "prompts_and_images",
        "image_moderation_models": ["stablediffusion"]}, "orgs": {"kids": {"image_moderation_models": ["*"]}}}))
    .unwrap();
    assert!(every.for_org("kids").moderates_images_of("gpt-image-2"));
}

#[test]
fn bad_files_are_refused_naming_the_field() {
    let rows = [
        (
            "unknown field",
            serde_json::json!({"default": {"moderaton": "off"}}),
            "moderaton",
        ),
        (
            "bad mode",
            serde_json::json!({"default": {"moderation": "sometimes"}}),
            "sometimes",
        ),
        (
            "unknown category",
            serde_json::json!({"orgs": {"a": {"block_categories": {"violent": 0.5}}}}),
            "orgs.a.block_categories",
        ),
        (
            "score out of range",
            serde_json::json!({"default": {"block_categories": {"violence": 1.5}}}),
            "default.block_categories.violence",
        ),
        (
            "empty term",
            serde_json::json!({"default": {"deny_terms": {"x": ["!!"]}}}),
            "default.deny_terms",
        ),
        (
            "bad category label",
            serde_json::json!({"default": {"deny_terms": {"Bad Label": ["x"]}}}),
            "Bad Label",
        ),
        (
            "an organisation the edge would refuse",
            serde_json::json!({"orgs": {"kids app": {"moderation": "prompts"}}}),
            "\"kids app\" is not an organisation name",
        ),
        (
            "a reserved organisation",
            serde_json::json!({"orgs": {"Uploads": {"moderation": "prompts"}}}),
            "\"Uploads\" is reserved",
        ),
        (
            "organisations differing only in case",
            serde_json::json!({"orgs": {"Kids": {}, "kids": {}}}),
            "differ only in case",
        ),
    ];
    for (name, json, names) in rows {
        let error = policies(json).err().unwrap_or_else(|| panic!("{name}: accepted"));
        assert!(error.contains(names), "{name}: {error}");
    }
}

#[test]
fn moderation_verdicts() {
    let flags_only = policies(serde_json::json!({"default": {"moderation": "prompts"}}))
        .unwrap()
        .for_org("x");
    let thresholds = policies(serde_json::json!({"default": {"moderation": "prompts",
        "block_categories": {"violence": 0.3, "sexual": 0.2}}}))
    .unwrap()
    .for_org("x");
    let rows: &[(&str, &Policy, ModerationResult, Option<&str>)] = &[
        ("nothing flagged", &flags_only, verdict(&[], &[("violence", 0.1)]), None),
        (
            "flagged category",
            &flags_only,
            verdict(&[("violence", 0.9)], &[]),
            Some("violence"),
        ),
        (
            "the highest flagged score names it",
            &flags_only,
            verdict(&[("hate", 0.6), ("violence", 0.9)], &[]),
            Some("violence"),
        ),
        (
            "a threshold refuses below the model's flag",
            &thresholds,
            verdict(&[], &[("violence", 0.35), ("sexual", 0.0)]),
            Some("violence"),
        ),
        (
            "under the thresholds",
            &thresholds,
            verdict(&[], &[("violence", 0.25), ("sexual", 0.1)]),
            None,
        ),
        (
            "a flagged category left out of the thresholds still refuses",
            &thresholds,
            verdict(&[("hate", 0.95)], &[("violence", 0.0), ("sexual", 0.0)]),
            Some("hate"),
        ),
        (
            "sexual/minors refuses",
            &thresholds,
            verdict(&[("sexual/minors", 0.5)], &[("violence", 0.0), ("sexual", 0.0)]),
            Some("sexual/minors"),
        ),
        (
            "an unknown category is named other",
            &flags_only,
            verdict(&[("violence\n<script>", 0.9)], &[]),
            Some("other"),
        ),
        (
            "flagged without a category",
            &flags_only,
            ModerationResult {
                flagged: true,
                ..Default::default()
            },
            Some("other"),
        ),
    ];
    for (name, policy, result, want) in rows {
        assert_eq!(policy.refused_category(result).unwrap().as_deref(), *want, "{name}");
    }
    // A category the thresholds name, without a score: not a usable answer.
    let error = thresholds
        .refused_category(&verdict(&[], &[("violence", 0.1)]))
        .unwrap_err();
    assert!(error.contains("no score for sexual"), "{error}");
}

#[test]
fn image_moderation_models_must_be_known() {
    let p = policies(serde_json::json!({
        "default": {"moderation": "prompts_and_images", "image_moderation_models": ["sd3-medium"]},
        "orgs": {"kids": {"image_moderation_models": ["*"]},
                 "typo": {"image_moderation_models": ["gpt-image-2", "sd3-meduim"]}}
    }))
    .unwrap();
    let known = |m: &str| ["gpt-image-2", "sd3-medium"].contains(&m);
    let error = p.check_image_models(known).unwrap_err();
    assert!(
        error.contains("orgs.typo.image_moderation_models") && error.contains("\"sd3-meduim\""),
        "{error}"
    );
    let error = p.check_image_models(|m| m == "gpt-image-2").unwrap_err();
    assert!(
        error.starts_with("default.image_moderation_models") && error.contains("\"sd3-medium\""),
        "{error}"
    );
    let fine = policies(serde_json::json!({"default": {"image_moderation_models": ["*", "gpt-image-2"]}})).unwrap();
    assert!(fine.check_image_models(known).is_ok());
}
