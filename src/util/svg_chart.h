#pragma once
// Small SVG charts for reports that people would rather look at than read: a line chart (several named series on
// shared axes, optionally log-scaled: loss curves, tokens/s against context) and a bar chart (one value per
// label, with its range: tokens/s per configuration at one context). Tick labels are plain numbers.
#include <string>
#include <utility>
#include <vector>

namespace mha2mla {

struct ChartSeries {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y), drawn in order
  bool markers = false;                           // a dot at every point
};

struct Chart {
  std::string title, x_label, y_label;
  bool log_x = false, log_y = false;
  bool y_from_zero = false;  // a linear y axis starts at 0 (speeds, where the ratio between lines matters)
  std::vector<ChartSeries> series;
  std::string svg() const;
};

struct BarChart {
  struct Bar {
    std::string label;
    double value = 0, lo = 0, hi = 0;  // the bar's height, and a whisker from lo to hi when lo < hi
  };
  std::string title, y_label;
  std::vector<Bar> bars;  // the y axis starts at 0
  std::string svg() const;
};

}  // namespace mha2mla
