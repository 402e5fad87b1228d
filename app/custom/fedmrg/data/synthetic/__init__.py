"""Synthetic chest radiographs and reports, for work where real images are missing.

- :func:`render_study_image`: a frontal radiograph whose content follows 14-observation labels.
- :func:`make_synthetic_studies`: fully synthetic studies (labels, a report in a per-site style, a PNG).
- :func:`render_for_records`: a rendered image for each real, report-only record (e.g. IU X-ray).

Every rendered image is marked ``synthetic=True`` in its record.
"""

from fedmrg.data.synthetic.layout import FindingLayout, sample_layout
from fedmrg.data.synthetic.renderer import RENDERER_VERSION, render_study_image
from fedmrg.data.synthetic.reports import ReportStyle, SyntheticReport, report_style, write_report
from fedmrg.data.synthetic.sampling import sample_findings, style_prevalence
from fedmrg.data.synthetic.studies import label_agreement, make_synthetic_studies, render_for_records

__all__ = [
    "RENDERER_VERSION",
    "FindingLayout",
    "ReportStyle",
    "SyntheticReport",
    "label_agreement",
    "make_synthetic_studies",
    "render_for_records",
    "render_study_image",
    "report_style",
    "sample_findings",
    "sample_layout",
    "style_prevalence",
    "write_report",
]
