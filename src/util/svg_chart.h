#pragma once
// A small SVG line chart: several named series on shared axes, optionally log-scaled, for reports that
// people would rather look at than read (loss curves, tokens/s against context).
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
  std::vector<ChartSeries> series;
  std::string svg() const;
};

}  // namespace mha2mla
