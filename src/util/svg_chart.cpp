#include "util/svg_chart.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>

namespace mha2mla {
namespace {

const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                         "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) o += c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '&' ? "&amp;" : std::string(1, c);
  return o;
}

// Plain tick labels ("16384", "154", "2.5"), not "1.64e+04": scientific notation only below 0.001.
std::string num(double v) {
  std::ostringstream o;
  const double a = std::fabs(v);
  if (a >= 100 || a == 0)
    o << std::fixed << std::setprecision(0) << v;
  else if (a >= 0.001)
    o << std::fixed << std::setprecision(a >= 10 ? 1 : a >= 1 ? 2 : 3) << v;
  else
    o << std::setprecision(3) << v;
  return o.str();
}

const double kW = 760, kH = 420, kL = 70, kT = 40, kB = 50;

void frame(std::ostringstream& s, const std::string& title, double right) {
  s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << kW << "' height='" << kH
    << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
  if (!title.empty()) s << "<text x='" << kL << "' y='22' font-size='14'>" << esc(title) << "</text>\n";
  s << "<line x1='" << kL << "' y1='" << kH - kB << "' x2='" << kW - right << "' y2='" << kH - kB << "' stroke='black'/>\n";
  s << "<line x1='" << kL << "' y1='" << kT << "' x2='" << kL << "' y2='" << kH - kB << "' stroke='black'/>\n";
}

void y_title(std::ostringstream& s, const std::string& label) {
  s << "<text x='16' y='" << (kT + kH - kB) / 2 << "' transform='rotate(-90 16 " << (kT + kH - kB) / 2
    << ")' text-anchor='middle'>" << esc(label) << "</text>\n";
}

}  // namespace

std::string Chart::svg() const {
  const double W = kW, H = kH, L = kL, T = kT, B = kB;
  const double legend_w = 190, R = legend_w + 20;
  auto fx = [&](double x) { return log_x ? std::log10(std::max(x, 1e-300)) : x; };
  auto fy = [&](double y) { return log_y ? std::log10(std::max(y, 1e-300)) : y; };
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto& s : series)
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      x0 = std::min(x0, fx(x)), x1 = std::max(x1, fx(x));
      y0 = std::min(y0, fy(y)), y1 = std::max(y1, fy(y));
    }
  if (x0 > x1) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  if (!log_y && y0 > 0 && (y_from_zero || y0 < 0.5 * y1)) y0 = 0;  // or when the data is near zero anyway
  auto px = [&](double x) { return L + (fx(x) - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return T + (1 - (fy(y) - y0) / (y1 - y0)) * (H - T - B); };
  auto inv = [](double v, bool lg) { return lg ? std::pow(10.0, v) : v; };
  std::ostringstream s;
  frame(s, title, R);
  for (int i = 0; i <= 4; ++i) {
    const double yv = inv(y0 + (y1 - y0) * i / 4.0, log_y), xv = inv(x0 + (x1 - x0) * i / 4.0, log_x);
    s << "<line x1='" << L << "' y1='" << py(yv) << "' x2='" << W - R << "' y2='" << py(yv) << "' stroke='#eee'/>\n";
    s << "<text x='" << L - 6 << "' y='" << py(yv) + 4 << "' text-anchor='end'>" << num(yv) << "</text>\n";
    s << "<text x='" << px(xv) << "' y='" << H - B + 16 << "' text-anchor='middle'>" << num(xv) << "</text>\n";
  }
  s << "<text x='" << (L + W - R) / 2 << "' y='" << H - 10 << "' text-anchor='middle'>" << esc(x_label) << "</text>\n";
  y_title(s, y_label);
  for (size_t k = 0; k < series.size(); ++k) {
    const auto& sr = series[k];
    const char* color = kColors[k % (sizeof kColors / sizeof *kColors)];
    if (sr.points.size() > 1) {
      s << "<polyline fill='none' stroke='" << color << "' stroke-width='1.6' points='";
      for (const auto& [x, y] : sr.points)
        if (std::isfinite(x) && std::isfinite(y)) s << px(x) << "," << py(y) << " ";
      s << "'/>\n";
    }
    if (sr.markers || sr.points.size() == 1)
      for (const auto& [x, y] : sr.points)
        if (std::isfinite(x) && std::isfinite(y))
          s << "<circle cx='" << px(x) << "' cy='" << py(y) << "' r='3' fill='" << color << "'/>\n";
    const double ly = T + 14 * static_cast<double>(k) + 6;
    s << "<line x1='" << W - legend_w << "' y1='" << ly - 4 << "' x2='" << W - legend_w + 18 << "' y2='" << ly - 4
      << "' stroke='" << color << "' stroke-width='2'/>\n";
    s << "<text x='" << W - legend_w + 24 << "' y='" << ly << "'>" << esc(sr.name) << "</text>\n";
  }
  s << "</svg>\n";
  return s.str();
}

std::string BarChart::svg() const {
  const double R = 20, bottom = kH - kB, top = kT;
  double y1 = 0;
  for (const auto& b : bars) y1 = std::max({y1, b.value, b.hi});
  if (!(y1 > 0) || !std::isfinite(y1)) y1 = 1;
  y1 *= 1.05;  // room above the highest whisker
  auto py = [&](double y) { return bottom - y / y1 * (bottom - top); };
  std::ostringstream s;
  frame(s, title, R);
  for (int i = 0; i <= 4; ++i) {
    const double yv = y1 * i / 4.0;
    s << "<line x1='" << kL << "' y1='" << py(yv) << "' x2='" << kW - R << "' y2='" << py(yv) << "' stroke='#eee'/>\n";
    s << "<text x='" << kL - 6 << "' y='" << py(yv) + 4 << "' text-anchor='end'>" << num(yv) << "</text>\n";
  }
  y_title(s, y_label);
  const double slot = (kW - R - kL) / static_cast<double>(std::max<size_t>(bars.size(), 1)), w = slot * 0.6;
  for (size_t k = 0; k < bars.size(); ++k) {
    const auto& b = bars[k];
    const char* color = kColors[k % (sizeof kColors / sizeof *kColors)];
    const double cx = kL + slot * (static_cast<double>(k) + 0.5);
    const double v = std::isfinite(b.value) ? std::max(0.0, b.value) : 0.0;
    s << "<rect x='" << cx - w / 2 << "' y='" << py(v) << "' width='" << w << "' height='" << bottom - py(v)
      << "' fill='" << color << "'/>\n";
    if (b.lo < b.hi)
      s << "<line x1='" << cx << "' y1='" << py(b.lo) << "' x2='" << cx << "' y2='" << py(b.hi)
        << "' stroke='black'/>\n<line x1='" << cx - 5 << "' y1='" << py(b.hi) << "' x2='" << cx + 5 << "' y2='"
        << py(b.hi) << "' stroke='black'/>\n<line x1='" << cx - 5 << "' y1='" << py(b.lo) << "' x2='" << cx + 5
        << "' y2='" << py(b.lo) << "' stroke='black'/>\n";
    s << "<text x='" << cx << "' y='" << py(v) - 4 << "' text-anchor='middle'>" << num(b.value) << "</text>\n";
    s << "<text x='" << cx << "' y='" << bottom + 16 << "' text-anchor='middle'>" << esc(b.label) << "</text>\n";
  }
  s << "</svg>\n";
  return s.str();
}

}  // namespace mha2mla
