"""Task heads on top of the encoders: a sequence classifier and a sequence tagger (softmax or CRF)."""

from seqbucket_plugin.heads.classifier import ChunkLogits, ClassifierOutput, SequenceClassifier
from seqbucket_plugin.heads.crf import CRF, IGNORE_INDEX
from seqbucket_plugin.heads.tagger import SequenceTagger, TaggerOutput, pad_char_ids

__all__ = ["CRF", "IGNORE_INDEX", "ChunkLogits", "ClassifierOutput", "SequenceClassifier", "SequenceTagger", "TaggerOutput", "pad_char_ids"]
