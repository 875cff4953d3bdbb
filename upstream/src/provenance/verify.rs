//! Reads and validates an image's Content Credentials, for
//! `mcp-image-gateway provenance verify`: validity (and trust, given an
//! anchor), the signer, the actions and the chain of `parentOf` ingredients.

use std::io::Cursor;

use serde::Serialize;
use serde_json::{json, Value};

/// What a check found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `Invalid`, `Valid`, or `Trusted` (valid and signed under a given anchor).
    pub state: String,
    pub manifest_label: Option<String>,
    pub signer: Option<String>,
    pub claim_generator: Vec<String>,
    /// Each action: its name, software agent and digital source type.
    pub actions: Vec<Value>,
    /// The manifests the image was made from, newest first: each parentOf
    /// (after the componentOf ones beside it) with its relationship, label,
    /// signer, actions and validation failures.
    pub ingredients: Vec<Value>,
    /// Validation failure codes and explanations.
    pub failures: Vec<String>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.state != "Invalid"
    }
}

/// Checks `image` (of MIME type `mime`); `anchors` are PEM roots to trust.
pub fn verify(image: &[u8], mime: &str, anchors: Option<&str>) -> Result<Report, String> {
    let mut settings = json!({"verify": {"verify_trust": anchors.is_some()}});
    if let Some(anchors) = anchors {
        settings["trust"] = json!({"trust_anchors": anchors});
    }
    let context = c2pa::Context::new()
        .with_settings(settings)
        .map_err(|e| format!("validator settings: {e}"))?;
    let reader = c2pa::Reader::from_context(context)
        .with_stream(mime, Cursor::new(image))
        .map_err(|e| match e {
            c2pa::Error::JumbfNotFound => "the image carries no Content Credentials".to_string(),
            other => format!("the Content Credentials could not be read: {other}"),
        })?;
    let state = match reader.validation_state() {
        c2pa::ValidationState::Invalid => "Invalid",
        c2pa::ValidationState::Valid => "Valid",
        c2pa::ValidationState::Trusted => "Trusted",
    };
    let failures = reader
        .validation_results()
        .and_then(|results| results.active_manifest())
        .map(|codes| {
            codes
                .failure()
                .iter()
                .map(|s| format!("{}: {}", s.code(), s.explanation().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let manifest = reader.active_manifest();
    let mut ingredients = Vec::new();
    let mut current = manifest;
    // Down the parentOf chain, each manifest's componentOf ingredients
    // listed beside it. Bounded: a store cannot name more ancestors than it holds.
    while let Some(holder) = current.take() {
        for component in holder.ingredients().iter().filter(|i| !i.is_parent()) {
            ingredients.push(describe_ingredient(&reader, component));
        }
        let Some(parent) = holder.ingredients().iter().find(|i| i.is_parent()) else {
            break;
        };
        ingredients.push(describe_ingredient(&reader, parent));
        if ingredients.len() > reader.manifests().len() {
            break;
        }
        current = parent.active_manifest().and_then(|label| reader.get_manifest(label));
    }
    Ok(Report {
        state: state.into(),
        manifest_label: reader.active_label().map(str::to_string),
        signer: manifest.and_then(|m| m.issuer()),
        claim_generator: manifest
            .map(|m| {
                m.claim_generator_info
                    .iter()
                    .flatten()
                    .map(|info| format!("{} {}", info.name, info.version.as_deref().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default(),
        actions: manifest.map(actions).unwrap_or_default(),
        ingredients,
        failures,
    })
}

/// An ingredient's title, relationship, manifest label, signer, actions and
/// validation failures (claim v2 keeps them in `validation_results`, v1 in
/// `validation_status`).
fn describe_ingredient(reader: &c2pa::Reader, ingredient: &c2pa::Ingredient) -> Value {
    use c2pa::validation_results::validation_codes::is_success;
    let manifest = ingredient
        .active_manifest()
        .and_then(|label| reader.get_manifest(label));
    let v2 = ingredient
        .validation_results()
        .and_then(|results| results.active_manifest())
        .map(|codes| codes.failure().iter().collect::<Vec<_>>());
    let failures: Vec<String> = v2
        .unwrap_or_else(|| {
            ingredient
                .validation_status()
                .unwrap_or_default()
                .iter()
                .filter(|s| !is_success(s.code()))
                .collect()
        })
        .into_iter()
        .map(|s| format!("{}: {}", s.code(), s.explanation().unwrap_or_default()))
        .collect();
    json!({
        "title": ingredient.title(),
        "relationship": if ingredient.is_parent() { "parentOf" } else { "componentOf" },
        "manifest_label": ingredient.active_manifest(),
        "signer": manifest.and_then(|m| m.issuer()),
        "actions": manifest.map(actions).unwrap_or_default(),
        "failures": failures,
    })
}

/// The actions of `manifest`'s actions assertion, each as name, agent and source type.
fn actions(manifest: &c2pa::Manifest) -> Vec<Value> {
    let assertion = manifest
        .find_assertion::<Value>("c2pa.actions.v2")
        .or_else(|_| manifest.find_assertion::<Value>("c2pa.actions"))
        .unwrap_or_default();
    assertion["actions"]
        .as_array()
        .map(|actions| {
            actions
                .iter()
                .map(|a| {
                    let mut action = json!({
                        "action": a["action"],
                        "software_agent": a["softwareAgent"]["name"],
                        "digital_source_type": a["digitalSourceType"],
                    });
                    if let Some(region) = changed_rectangle(a) {
                        action["region"] = region;
                    }
                    action
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The first pixel rectangle among an action's `changes` (an in-paint's
/// region), as `{x, y, width, height}`.
fn changed_rectangle(action: &Value) -> Option<Value> {
    let changes = action["changes"].as_array()?;
    let shape = changes
        .iter()
        .filter_map(|change| change["region"].as_array())
        .flatten()
        .map(|range| &range["shape"])
        .find(|shape| shape["type"] == "rectangle" && shape["unit"] == "pixel")?;
    // Pixels are whole, though c2pa reads every coordinate as a float.
    let pixels = |value: &Value| value.as_f64().map(|v| v.round() as u64);
    Some(json!({
        "x": pixels(&shape["origin"]["x"])?,
        "y": pixels(&shape["origin"]["y"])?,
        "width": pixels(&shape["width"])?,
        "height": pixels(&shape["height"])?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::input::Region;
    use crate::media::types::OutputFormat;
    use crate::provenance::manifest::{EditFacts, ImageFacts, Source};
    use crate::provenance::sign::sign;
    use crate::provenance::SigningKey;

    /// A CA and a leaf as `dev-init` makes them.
    fn key() -> (SigningKey, String) {
        let dir = std::env::temp_dir().join(format!("prov-test-{}", uuid::Uuid::new_v4()));
        let files = crate::provenance::dev_ca::init(&dir).unwrap();
        let key = SigningKey::from_files(&files.chain, &files.key).unwrap();
        let root = std::fs::read_to_string(&files.root).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        (key, root)
    }

    fn picture(format: OutputFormat) -> Vec<u8> {
        crate::providers::offline_preview::render("a test", 0, 64, 48, format)
            .unwrap()
            .bytes
            .to_vec()
    }

    #[test]
    fn signed_images_of_every_format_are_trusted_under_the_dev_root() {
        let (key, root) = key();
        let now = chrono::Utc::now().timestamp();
        for format in OutputFormat::ALL {
            let facts = ImageFacts {
                model: "offline-preview",
                provider: "offline-preview",
                format,
                edit: None,
            };
            let signed = sign(&picture(format), &facts, &key, now).unwrap();
            let report = verify(&signed.bytes(), format.mime_type(), Some(&root)).unwrap();
            assert_eq!(report.state, "Trusted", "{format:?}: {report:?}");
            assert_eq!(
                report.manifest_label.as_deref(),
                Some(signed.credentials.manifest_label.as_str())
            );
            assert_eq!(report.actions[0]["action"], "c2pa.created");
            assert_eq!(
                verify(&signed.bytes(), format.mime_type(), None).unwrap().state,
                "Valid"
            );
        }
    }

    /// A PNG's facts: an edit of `inputs` unless there are none.
    fn png_facts<'a>(inputs: &'a [Source<'a>]) -> ImageFacts<'a> {
        ImageFacts {
            model: "offline-preview",
            provider: "offline-preview",
            format: OutputFormat::Png,
            edit: (!inputs.is_empty()).then_some(EditFacts { inputs, region: None }),
        }
    }

    fn png(bytes: &[u8]) -> Source<'_> {
        Source {
            bytes,
            format: OutputFormat::Png,
        }
    }

    #[test]
    fn an_edit_of_an_edit_keeps_the_chain() {
        let (key, root) = key();
        let now = chrono::Utc::now().timestamp();
        let image = picture(OutputFormat::Png);
        let first = sign(&image, &png_facts(&[]), &key, now).unwrap();
        let second = sign(&image, &png_facts(&[png(&first.bytes())]), &key, now).unwrap();
        let third = sign(&image, &png_facts(&[png(&second.bytes())]), &key, now).unwrap();
        let report = verify(&third.bytes(), "image/png", Some(&root)).unwrap();
        assert_eq!(report.state, "Trusted", "{report:?}");
        let labels: Vec<_> = report.ingredients.iter().map(|i| i["manifest_label"].clone()).collect();
        assert_eq!(
            labels,
            vec![
                json!(second.credentials.manifest_label),
                json!(first.credentials.manifest_label)
            ]
        );
        assert_eq!(report.actions[1]["action"], "c2pa.edited");
    }

    #[test]
    fn every_edit_input_is_an_ingredient_and_an_in_paint_names_its_region() {
        let (key, root) = key();
        let now = chrono::Utc::now().timestamp();
        let image = picture(OutputFormat::Png);
        let first = sign(&image, &png_facts(&[]), &key, now).unwrap();
        let guide = sign(&picture(OutputFormat::Jpeg), &facts_of(OutputFormat::Jpeg), &key, now).unwrap();
        let (first_bytes, guide_bytes) = (first.bytes(), guide.bytes());
        let unsigned = picture(OutputFormat::Png);
        let inputs = [
            png(&first_bytes),
            Source {
                bytes: &guide_bytes,
                format: OutputFormat::Jpeg,
            },
            png(&unsigned),
        ];
        let region = Region {
            x: 4,
            y: 8,
            width: 20,
            height: 10,
        };
        let facts = ImageFacts {
            edit: Some(EditFacts {
                inputs: &inputs,
                region: Some(region),
            }),
            ..png_facts(&[])
        };
        let edited = sign(&image, &facts, &key, now).unwrap();
        let report = verify(&edited.bytes(), "image/png", Some(&root)).unwrap();
        assert_eq!(report.state, "Trusted", "{report:?}");
        assert_eq!(
            report.actions[1]["region"],
            json!({"x": 4, "y": 8, "width": 20, "height": 10})
        );
        // Components first (each with its own manifest, if it had one), then the parent.
        let found: Vec<_> = report
            .ingredients
            .iter()
            .map(|i| (i["relationship"].clone(), i["manifest_label"].clone()))
            .collect();
        assert_eq!(
            found,
            vec![
                (json!("componentOf"), json!(guide.credentials.manifest_label)),
                (json!("componentOf"), Value::Null),
                (json!("parentOf"), json!(first.credentials.manifest_label)),
            ],
            "{report:?}"
        );
        let from = edited.credentials.edited_from.unwrap();
        assert_eq!(from.manifest_label, Some(first.credentials.manifest_label));
        assert_eq!(edited.credentials.software_agent, "offline-preview (offline-preview)");
        assert_eq!(first.credentials.edited_from, None);
    }

    fn facts_of(format: OutputFormat) -> ImageFacts<'static> {
        ImageFacts {
            format,
            ..png_facts(&[])
        }
    }

    #[test]
    fn a_provider_images_own_manifest_is_kept_as_an_ingredient() {
        let (key, root) = key();
        let now = chrono::Utc::now().timestamp();
        let provider = sign(&picture(OutputFormat::Png), &png_facts(&[]), &key, now).unwrap();
        let ours = sign(&provider.bytes(), &png_facts(&[]), &key, now).unwrap();
        let report = verify(&ours.bytes(), "image/png", Some(&root)).unwrap();
        assert_eq!(report.state, "Trusted", "{report:?}");
        assert_eq!(
            report.manifest_label.as_deref(),
            Some(ours.credentials.manifest_label.as_str())
        );
        assert_eq!(report.ingredients[0]["relationship"], "componentOf", "{report:?}");
        assert_eq!(
            report.ingredients[0]["manifest_label"],
            json!(provider.credentials.manifest_label)
        );
        let reader = c2pa::Reader::from_context(c2pa::Context::new())
            .with_stream("image/png", Cursor::new(ours.bytes().to_vec()))
            .unwrap();
        let ingredient = &reader.active_manifest().unwrap().ingredients()[0];
        assert_eq!(
            ingredient.active_manifest(),
            Some(provider.credentials.manifest_label.as_str())
        );
    }

    /// A PNG that readers would stop in before our manifest (a chunk type
    /// not of letters), or refuse (a second manifest left beside ours), is
    /// not signed into an image no one can check.
    #[test]
    fn a_png_readers_cannot_walk_is_not_signed() {
        let (key, _) = key();
        let now = chrono::Utc::now().timestamp();
        let image = picture(OutputFormat::Png);
        let idat = image.windows(4).position(|w| w == b"IDAT").unwrap() - 4;
        let with = |chunk: &[u8]| [&image[..idat], chunk, &image[idat..]].concat();
        let odd = with(&[0, 0, 0, 0, 0xff, 0xfe, 0xfd, 0xfc, 0, 0, 0, 0]);
        let signed = sign(&image, &png_facts(&[]), &key, now).unwrap().bytes();
        let manifest_at = signed.windows(4).position(|w| w == b"caBX").unwrap() - 4;
        let manifest_len = u32::from_be_bytes(signed[manifest_at..manifest_at + 4].try_into().unwrap()) as usize;
        let signed_idat = signed.windows(4).position(|w| w == b"IDAT").unwrap() - 4;
        let copy = &signed[manifest_at..manifest_at + manifest_len + 12];
        let twice = [&signed[..signed_idat], copy, &signed[signed_idat..]].concat();
        assert!(
            crate::provenance::png_chunks::layout(&signed).is_some(),
            "one manifest walks"
        );
        for (what, png) in [("odd chunk type", odd), ("two manifests", twice)] {
            let error = sign(&png, &png_facts(&[]), &key, now).expect_err(what);
            assert_eq!(error.reason(), "signing_failed", "{what}");
            assert!(error.detail().contains("C2PA readers"), "{what}: {}", error.detail());
        }
    }

    #[test]
    fn a_forged_or_corrupt_source_manifest_never_stops_the_signing() {
        let (key, root) = key();
        let now = chrono::Utc::now().timestamp();
        let signed = sign(&picture(OutputFormat::Png), &png_facts(&[]), &key, now)
            .unwrap()
            .bytes()
            .to_vec();
        let manifest_at = signed.windows(4).position(|w| w == b"caBX").unwrap();
        let idat = signed.windows(4).position(|w| w == b"IDAT").unwrap();
        let mut forged = signed.clone();
        forged[idat + 20] ^= 1; // its pixels no longer match its manifest
        let mut corrupt = signed.clone();
        for byte in &mut corrupt[manifest_at + 40..manifest_at + 240] {
            *byte = 0x5a; // its manifest no longer parses
        }
        for (name, source) in [("forged", &forged), ("corrupt", &corrupt)] {
            let inputs = [png(source)];
            for facts in [png_facts(&[]), png_facts(&inputs)] {
                let ours = sign(source, &facts, &key, now).unwrap_or_else(|e| panic!("{name}: {e}"));
                let report = verify(&ours.bytes(), "image/png", Some(&root)).unwrap();
                assert_eq!(
                    report.manifest_label.as_deref(),
                    Some(ours.credentials.manifest_label.as_str())
                );
                assert_ne!(report.state, "Invalid", "{name}: {report:?}");
                if name == "forged" && facts.edit.is_some() {
                    // The source's broken hash is shown on its ingredient.
                    let parent = report
                        .ingredients
                        .iter()
                        .find(|i| i["relationship"] == "parentOf")
                        .unwrap();
                    let failures = parent["failures"].as_array().unwrap();
                    assert!(!failures.is_empty(), "{report:?}");
                }
            }
        }
    }

    /// `png` with a `caBX` (C2PA) chunk of `size` bytes after its header.
    fn with_manifest_chunk(png: &[u8], size: usize) -> Vec<u8> {
        let crc = |data: &[u8]| {
            let mut crc = !0u32;
            for &byte in data {
                crc ^= u32::from(byte);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 {
                        (crc >> 1) ^ 0xedb8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        };
        let mut body = b"caBX".to_vec();
        body.extend(std::iter::repeat_n(0x5a, size));
        let header_end = 8 + 25; // signature, then IHDR
        let mut out = png[..header_end].to_vec();
        out.extend((size as u32).to_be_bytes());
        out.extend(&body);
        out.extend(crc(&body).to_be_bytes());
        out.extend(&png[header_end..]);
        out
    }

    #[test]
    fn an_edits_inputs_share_one_budget_of_foreign_manifest_bytes() {
        let image = picture(OutputFormat::Png);
        let large = with_manifest_chunk(&image, crate::provenance::sign::MAX_FOREIGN_MANIFEST_BYTES * 3 / 5);
        let ingredients = crate::provenance::sign::input_ingredients(&[png(&large), png(&large)]).unwrap();
        // The first input's manifest is read (here: recorded with its failure), the second's left out.
        assert!(ingredients[0].validation_results().is_some(), "{:?}", ingredients[0]);
        assert!(ingredients[1].validation_results().is_none(), "{:?}", ingredients[1]);
        assert!(ingredients[1].manifest_data_ref().is_none());
    }

    #[test]
    fn a_source_with_an_oversized_manifest_is_recorded_without_it() {
        let (key, root) = key();
        let image = picture(OutputFormat::Png);
        let huge = with_manifest_chunk(&image, crate::provenance::sign::MAX_FOREIGN_MANIFEST_BYTES + 1);
        assert!(c2pa::jumbf_io::load_jumbf_from_memory("image/png", &huge).is_ok());
        let source = png(&huge);
        let mut budget = crate::provenance::sign::MAX_FOREIGN_MANIFEST_BYTES;
        let ingredient = crate::provenance::sign::input_ingredient(&source, 0, &mut budget).unwrap();
        assert!(ingredient.is_parent());
        // Never handed to c2pa's parser (which would have recorded its failure).
        assert!(ingredient.validation_results().is_none(), "{ingredient:?}");
        assert!(ingredient.active_manifest().is_none());
        assert!(ingredient.manifest_data_ref().is_none());
        let ours = sign(&image, &png_facts(&[source]), &key, chrono::Utc::now().timestamp()).unwrap();
        let report = verify(&ours.bytes(), "image/png", Some(&root)).unwrap();
        assert_eq!(report.state, "Trusted", "{report:?}");
    }

    #[test]
    fn an_expired_certificate_signs_nothing() {
        let (key, _) = key();
        let facts = png_facts(&[]);
        let error = sign(&picture(OutputFormat::Png), &facts, &key, key.not_after + 1).unwrap_err();
        assert_eq!(error.reason(), "certificate_not_valid");
    }

    #[test]
    fn one_changed_pixel_byte_is_invalid() {
        let (key, _) = key();
        let facts = png_facts(&[]);
        let signed = sign(
            &picture(OutputFormat::Png),
            &facts,
            &key,
            chrono::Utc::now().timestamp(),
        )
        .unwrap();
        let mut bytes = signed.bytes().to_vec();
        let idat = bytes.windows(4).position(|w| w == b"IDAT").unwrap();
        bytes[idat + 8] ^= 1;
        assert_eq!(verify(&bytes, "image/png", None).unwrap().state, "Invalid");
    }

    /// The seeds of `make fuzz-manifest` (`upstream/fuzz`), written to
    /// `FUZZ_SEEDS`: each format unsigned, signed, and signed over a signed
    /// image (an ingredient with a manifest of its own), PNG also as an
    /// edit of an edit; each once per reading the target runs (its first
    /// byte: the format's index, plus 3 for a provider's output).
    #[test]
    #[ignore = "writes the fuzz corpus: run by make fuzz-manifest"]
    fn fuzz_seeds() {
        let Some(dir) = std::env::var_os("FUZZ_SEEDS") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (key, _) = key();
        let now = chrono::Utc::now().timestamp();
        for (index, format) in OutputFormat::ALL.into_iter().enumerate() {
            let facts = ImageFacts {
                model: "offline-preview",
                provider: "offline-preview",
                format,
                edit: None,
            };
            let unsigned = picture(format);
            let signed = sign(&unsigned, &facts, &key, now).unwrap().bytes().to_vec();
            let resigned = sign(&signed, &facts, &key, now).unwrap().bytes().to_vec();
            let mut images = vec![("unsigned", unsigned), ("signed", signed), ("resigned", resigned)];
            if format == OutputFormat::Png {
                let edit = sign(&images[0].1, &png_facts(&[png(&images[1].1)]), &key, now).unwrap();
                images.push(("edit", edit.bytes().to_vec()));
            }
            for (name, image) in images {
                for (reading, selector) in [("source", index), ("provider", index + 3), ("placement", index + 6)] {
                    let mut seed = vec![selector as u8];
                    seed.extend(&image);
                    std::fs::write(dir.join(format!("{}-{name}-{reading}", format.as_str())), seed).unwrap();
                }
            }
        }
    }
}
