// Streaming text: stop strings that span tokens, text held back while it may still become one, and incomplete
// UTF-8 characters held until whole (over the shipped model's tokenizer).
#include <gtest/gtest.h>

#include "serve/text_stream.h"

using namespace mha2mla;

namespace {
const tok::Tokenizer& tokenizer() {
  static auto t = tok::Tokenizer::load(std::string(MHA2MLA_SOURCE_DIR) + "/models/kjv-mha");
  return t;
}
std::vector<int64_t> ids_of(const std::string& s) {
  auto v = tokenizer().encode(s, false);
  return {v.begin(), v.end()};
}
}  // namespace

TEST(TextStream, WithoutStopStringsTheDeltasAreTheDecodedText) {
  const std::string text = "And God said, Let there be light: and there was light.";
  serve::TextStream ts(tokenizer(), {}, {});
  std::string got;
  for (auto id : ids_of(text)) got += ts.push(id);
  got += ts.finish();
  EXPECT_EQ(got, tokenizer().decode(tokenizer().encode(text, false), true));
  EXPECT_FALSE(ts.stopped());
}

TEST(TextStream, AStopStringAcrossTokensEndsTheTextBeforeIt) {
  const std::string text = "In the beginning God created the heaven and the earth.";
  const auto ids = ids_of(text);
  ASSERT_GT(ids.size(), 6u);
  for (const std::string stop : {"heaven and", "created the", "earth."}) {
    serve::TextStream ts(tokenizer(), {"zzz", stop}, {});
    std::string got;
    for (auto id : ids) {
      got += ts.push(id);
      // Nothing after the stop string's start is ever sent, even before it is complete.
      EXPECT_EQ(got.find(stop.substr(0, 3)), std::string::npos) << got;
      if (ts.stopped()) break;
    }
    EXPECT_TRUE(ts.stopped()) << stop;
    got += ts.finish();
    const std::string full = tokenizer().decode(tokenizer().encode(text, false), true);
    EXPECT_EQ(got, full.substr(0, full.find(stop))) << stop;
  }
}

TEST(TextStream, SkippedIdsAddNoText) {
  serve::TextStream ts(tokenizer(), {}, {0});
  EXPECT_EQ(ts.push(0), "");
  std::string got;
  for (auto id : ids_of("Amen.")) got += ts.push(id);
  EXPECT_EQ(got + ts.finish(), tokenizer().decode(tokenizer().encode("Amen.", false), true));
}

TEST(TextStream, FinishReleasesTheHeldBackTailOnce) {
  // The text ends in the start of a stop string that never completes: held back, then released by finish(),
  // after which text() is the whole decoded text, the tail once.
  const std::string text = "In the beginning God created";
  serve::TextStream ts(tokenizer(), {"created the heaven"}, {});
  std::string got;
  for (auto id : ids_of(text)) got += ts.push(id);
  const std::string full = tokenizer().decode(tokenizer().encode(text, false), true);
  EXPECT_LT(got.size(), full.size());  // "created" waits: it may still become the stop string
  const std::string rest = ts.finish();
  EXPECT_FALSE(rest.empty());
  EXPECT_EQ(got + rest, full);
  EXPECT_EQ(ts.text(), full);
  EXPECT_FALSE(ts.stopped());
}
