from .pipeline_text_to_video_synth import TextToVideoSDPipeline, TextToVideoSDPipelineOutput, VideoToVideoSDPipeline

__all__ = ["TextToVideoSDPipeline", "TextToVideoSDPipelineOutput", "VideoToVideoSDPipeline"]
