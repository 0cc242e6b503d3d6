use super::{ChatTemplate, Message};
use crate::Error;

/// Gemma 3's template, as Hugging Face ships it.
const GEMMA3: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"#;

#[test]
fn a_gemma_template_renders() {
    let t = ChatTemplate::new(GEMMA3, "<bos>", "<eos>").unwrap();
    let user = [Message::new("user", "Name three colors.")];
    assert_eq!(t.render(&user, true).unwrap(), "<bos><start_of_turn>user\nName three colors.<end_of_turn>\n<start_of_turn>model\n");
    let chat = [Message::new("system", "Be brief."), Message::new("user", " Hi "), Message::new("assistant", "Hello!")];
    assert_eq!(
        t.render(&chat, false).unwrap(),
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    );
    // The template's own raise_exception becomes a typed error.
    let err = t.render(&[Message::new("assistant", "first")], true).unwrap_err();
    assert!(matches!(err, Error::ChatTemplate(ref m) if m.contains("must alternate")), "{err}");
}

#[test]
fn hugging_face_helpers_are_there() {
    let src = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m | tojson }}{% endfor %}\
               |{{ tools is none }}|{{ strftime_now('%Y') | length }}|{{ ' x '.strip() }}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let out = t.render(&[Message::new("user", "a"), Message::new("user", "b")], true).unwrap();
    assert_eq!(out, r#"{"role": "user", "content": "a"}|True|4|x"#);
    // Python's json.dumps: separators, indentation, no HTML escaping, non-ASCII kept.
    let t = ChatTemplate::new("{{ {'a': [1, 2.5, none, true], 'b': '<é>'} | tojson }}|{{ {'b': 1, 'a': {}} | tojson(indent=2, sort_keys=true) }}", "", "").unwrap();
    assert_eq!(t.render(&[Message::new("user", "a")], true).unwrap(), "{\"a\": [1, 2.5, null, true], \"b\": \"<é>\"}|{\n  \"a\": {},\n  \"b\": 1\n}");
}

/// Hostile templates end in a typed error, quickly, already at load.
#[test]
fn hostile_templates_fail_quickly() {
    let cases = [
        // An (almost) endless loop: out of fuel.
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
        // Unbounded recursion.
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        // A huge output (100 GB).
        "{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}",
        // A value nested too deeply for tojson.
        "{% set ns = namespace(x=[]) %}{% for i in range(10000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x | tojson }}",
        // A template that does not parse.
        "{% if %}",
    ];
    for src in cases {
        let start = std::time::Instant::now();
        let err = ChatTemplate::new(src, "", "").unwrap_err();
        assert!(matches!(err, Error::ChatTemplate(_)), "{src}: {err}");
        // About 0.1 s each when the machine is idle; the bound is for a hang, not a benchmark.
        assert!(start.elapsed().as_secs_f64() < 5.0, "{src}: {:?}", start.elapsed());
    }
}

#[test]
fn any_template_renders_now() {
    // Neither ChatML, Llama 3 nor Zephyr: kvchat used to refuse it.
    let t = ChatTemplate::new("{% for m in messages %}[{{ m.role | upper }}] {{ m.content }}\n{% endfor %}", "", "").unwrap();
    assert_eq!(t.render(&[Message::new("user", "hi")], false).unwrap(), "[USER] hi\n");
}
