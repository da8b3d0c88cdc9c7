// The chat formats, rendered by hand from the templates Meta and Qwen publish, and their detection.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "serve/chat_template.h"
#include "testing/files.h"
#include "util/error.h"

using namespace mha2mla;
using serve::ChatFormat;

namespace {
const std::vector<serve::ChatMessage> kChat = {
    {"system", "Be brief."}, {"user", " Who begat Enos? "}, {"assistant", "Seth."}, {"user", "And Cainan?"}};
}

TEST(ChatTemplate, ChatML) {
  EXPECT_EQ(serve::render_chat(ChatFormat::ChatML, kChat),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Who begat Enos? <|im_end|>\n"
            "<|im_start|>assistant\nSeth.<|im_end|>\n<|im_start|>user\nAnd Cainan?<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplate, Llama3) {
  EXPECT_EQ(serve::render_chat(ChatFormat::Llama3, kChat),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWho begat Enos?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nSeth.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nAnd Cainan?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplate, Llama2FoldsTheSystemMessageIntoTheFirstTurn) {
  EXPECT_EQ(serve::render_chat(ChatFormat::Llama2, kChat),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWho begat Enos? [/INST] Seth. </s>"
            "<s>[INST] And Cainan? [/INST]");
  EXPECT_THROW(serve::render_chat(ChatFormat::Llama2, {{"user", "a"}, {"user", "b"}}), Error);
  EXPECT_THROW(serve::render_chat(ChatFormat::ChatML, {{"robot", "a"}}), Error);
  EXPECT_THROW(serve::render_chat(ChatFormat::ChatML, {}), Error);
}

TEST(ChatTemplate, DetectedFromTheTemplateText) {
  // Excerpts of the templates shipped in Qwen2's, Llama-3's and Llama-2's tokenizer_config.json.
  EXPECT_EQ(serve::detect_chat_format("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                                      "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"),
            ChatFormat::ChatML);
  EXPECT_EQ(serve::detect_chat_format("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
                                      "message['content'] | trim + '<|eot_id|>' }}"),
            ChatFormat::Llama3);
  EXPECT_EQ(serve::detect_chat_format("{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"), ChatFormat::Llama2);
  EXPECT_FALSE(serve::detect_chat_format("{{ messages | tojson }}").has_value());
}

TEST(ChatTemplate, ModelFolderSaysWhyThereIsNone) {
  const std::string d = testutil::temp_dir("chat_tpl");
  EXPECT_FALSE(serve::model_chat_format(d).format.has_value());
  EXPECT_NE(serve::model_chat_format(d).why_not.find("tokenizer_config.json"), std::string::npos);
  testutil::write_file(d + "/tokenizer_config.json", R"({"chat_template": "{{ messages | tojson }}"})");
  EXPECT_NE(serve::model_chat_format(d).why_not.find("not one this server renders"), std::string::npos);
  testutil::write_file(d + "/tokenizer_config.json",
                       R"({"chat_template": [{"name": "default", "template": "<|im_start|>{{ m }}<|im_end|>"}]})");
  EXPECT_EQ(serve::model_chat_format(d).format, ChatFormat::ChatML);
}
