//! The Tasks extension (SEP-2663) through Envoy: a client that declares it
//! gets a task for `generate_image`, polls `tasks/get` — answered by either
//! of two upstream replicas from the shared store — and can cancel.

use std::time::{Duration, Instant};

use gateway_tests::fake_openai::FakeOptions;
use gateway_tests::mcp_client::{connect_with_tasks, McpClient};
use gateway_tests::stack::http_client;
use gateway_tests::{Backend, Stack, StackOptions};
use rmcp::model::{CallToolRequestParams, CallToolResponse, CancelTaskParams, GetTaskParams, TaskPayload, TaskStatus};
use rmcp::ServiceError;
use serde_json::json;

async fn start_task(client: &McpClient, prompt: &str) -> String {
    let arguments = json!({"prompt": prompt}).as_object().cloned().unwrap();
    match client
        .call_tool_once(CallToolRequestParams::new("generate_image").with_arguments(arguments))
        .await
        .unwrap()
    {
        CallToolResponse::Task(created) => {
            assert_eq!(created.task.status, TaskStatus::Working);
            assert!(created.task.poll_interval_ms.is_some());
            created.task.task_id
        }
        other => panic!("expected a task, got {other:?}"),
    }
}

async fn wait_for_terminal(client: &McpClient, task_id: &str) -> rmcp::model::DetailedTask {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let task = client.get_task(GetTaskParams::new(task_id)).await.unwrap().task;
        if task.status().is_terminal() || Instant::now() > deadline {
            return task;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn generations_run_as_tasks_any_replica_answers_and_cancel_works() {
    let stack = Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: FakeOptions {
                latency: Duration::from_millis(3000),
                ..FakeOptions::default()
            },
        },
        upstream_replicas: 2,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let client = connect_with_tasks(&stack.mcp_url, &stack.token("alice", "acme"))
        .await
        .unwrap();
    let capabilities = client.peer_info().unwrap().capabilities.clone();
    assert!(
        capabilities.supports_tasks(),
        "the server announces the Tasks extension"
    );

    let task_id = start_task(&client, "a lighthouse at night").await;
    let done = wait_for_terminal(&client, &task_id).await;
    let TaskPayload::Completed { result } = &done.payload else {
        panic!("expected completed, got {done:?}");
    };
    assert_eq!(result["isError"], false, "{result:?}");
    let url = result["structuredContent"]["image_urls"][0].as_str().unwrap();
    assert_eq!(http_client().get(url).send().await.unwrap().status(), 200);
    // Envoy spread the polls over both replicas, and both answered from the shared record.
    for metrics in &stack.metrics_urls {
        let text = http_client().get(metrics).send().await.unwrap().text().await.unwrap();
        let answered = text.lines().any(|l| {
            l.contains("mcp_request_duration_seconds_count") && l.contains("tasks/get") && l.contains("status=\"200\"")
        });
        assert!(answered, "{metrics} answered no tasks/get:\n{text}");
    }

    // Another organisation cannot see it.
    let mallory = connect_with_tasks(&stack.mcp_url, &stack.token("mallory", "globex"))
        .await
        .unwrap();
    match mallory.get_task(GetTaskParams::new(task_id.clone())).await {
        Err(ServiceError::McpError(error)) => assert!(error.message.contains("no task"), "{error:?}"),
        other => panic!("expected an error, got {other:?}"),
    }

    // Cancelled mid-generation: the task says so, nothing is stored, one audit event.
    let images_before = stack
        .audit_events()
        .iter()
        .filter(|e| e["fields"]["outcome"] == "Success")
        .count();
    let doomed = start_task(&client, "a storm that never ends").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.cancel_task(CancelTaskParams::new(doomed.clone())).await.unwrap();
    let cancelled = wait_for_terminal(&client, &doomed).await;
    assert_eq!(cancelled.status(), TaskStatus::Cancelled, "{cancelled:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let events = stack.audit_events();
    assert_eq!(
        events.iter().filter(|e| e["fields"]["outcome"] == "Success").count(),
        images_before,
        "the cancelled generation stored nothing: {events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| e["fields"]["outcome"] == "Cancelled").count(),
        1,
        "{events:?}"
    );
    assert_eq!(
        wait_for_terminal(&client, &doomed).await.status(),
        TaskStatus::Cancelled,
        "the finished run did not overwrite the cancellation"
    );
    for c in [client, mallory] {
        c.cancel().await.unwrap();
    }
}

/// A stop signal while a generation runs as a task: the replica finishes it
/// and records the result before it exits.
#[tokio::test]
async fn a_stopping_replica_finishes_its_tasks() {
    let mut stack = Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: FakeOptions {
                latency: Duration::from_secs(3),
                ..FakeOptions::default()
            },
        },
        upstream_env: vec![("GATEWAY_DRAIN_DELAY_SECS".into(), "0".into())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let client = connect_with_tasks(&stack.mcp_url, &stack.token("alice", "acme"))
        .await
        .unwrap();
    let task_id = start_task(&client, "a last lighthouse").await;
    stack.signal("upstream", "TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stack.exited("upstream") {
        assert!(Instant::now() < deadline, "the upstream did not exit after its task");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let record = stack.state_dir.join(format!("images/tasks/acme/{task_id}.json"));
    let task: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["result"]["isError"], false, "{task}");
}

/// A replica killed (SIGKILL) in the middle of a task: its lease stops being
/// renewed, and once it lapses the other replica reports the task failed with
/// a clear message; nothing is stored or billed for it.
#[tokio::test]
async fn a_crashed_replicas_task_fails_once_its_lease_lapses() {
    let stack = Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: FakeOptions {
                latency: Duration::from_secs(60),
                ..FakeOptions::default()
            },
        },
        upstream_replicas: 2,
        upstream_env: vec![("GATEWAY_TASK_LEASE_SECS".into(), "3".into())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let client = connect_with_tasks(&stack.mcp_url, &stack.token("alice", "acme"))
        .await
        .unwrap();
    let task_id = start_task(&client, "a lighthouse in a storm").await;
    let runner = ["upstream", "upstream-2"]
        .into_iter()
        .find(|name| stack.log(name).contains(&task_id))
        .expect("a replica logged the task's start");
    let survivor = if runner == "upstream" { "upstream-2" } else { "upstream" };
    // Still working while the runner renews its lease.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let task = get_task_retrying(&client, &task_id).await;
    assert_eq!(task.status(), TaskStatus::Working, "{task:?}");

    stack.signal(runner, "KILL");
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let task = get_task_retrying(&client, &task_id).await;
        if task.status().is_terminal() {
            break task;
        }
        assert!(
            Instant::now() < deadline,
            "the task stayed working after its replica died: {task:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(failed.status(), TaskStatus::Failed, "{failed:?}");
    let TaskPayload::Failed { error } = &failed.payload else {
        panic!("{failed:?}")
    };
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("lease lapsed") && message.contains("nothing was stored or billed"),
        "{message}"
    );
    assert!(
        stack.log(survivor).contains("task lease lapsed"),
        "the surviving replica recorded the lapse"
    );
    assert_eq!(
        stack.fake.as_ref().unwrap().requests().len(),
        1,
        "the provider call was in flight"
    );
    let billed: usize = ["upstream", "upstream-2"]
        .iter()
        .flat_map(|name| stack.log(name).lines().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
        .filter(|event| event["target"] == "billing")
        .count();
    assert_eq!(billed, 0, "nothing billed");
    // The record stays failed for every later reader.
    let again = get_task_retrying(&client, &task_id).await;
    assert_eq!(again.status(), TaskStatus::Failed);
    client.cancel().await.unwrap();
}

/// `tasks/get`, retried while Envoy still routes some attempts to a dead replica.
async fn get_task_retrying(client: &McpClient, task_id: &str) -> rmcp::model::DetailedTask {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.get_task(GetTaskParams::new(task_id)).await {
            Ok(result) => return result.task,
            Err(error) if Instant::now() < deadline => {
                eprintln!("tasks/get failed, retrying: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("tasks/get kept failing: {error}"),
        }
    }
}
