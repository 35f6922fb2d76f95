"""Result pages for people: one self-contained HTML file per evaluation, ablation or prediction.

Every image is embedded (base64 PNG / JPEG), so a page opens from disk with no server and
can be mailed or archived as one file. Frames come from the original videos; a video that is
gone is named in place of its pictures and the page is still written.
"""

from avarnet.report.ablation import BarChart, Section, write_results_page
from avarnet.report.detection import write_detection_report
from avarnet.report.evaluation import ClipScores, clip_embedding, write_evaluation_report
from avarnet.report.timeline import timeline_thumbnails, write_timeline_page

__all__ = [
    "BarChart",
    "ClipScores",
    "Section",
    "clip_embedding",
    "timeline_thumbnails",
    "write_detection_report",
    "write_evaluation_report",
    "write_results_page",
    "write_timeline_page",
]
