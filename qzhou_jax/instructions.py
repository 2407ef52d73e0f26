"""Every instruction text in one place: evaluation (by MTEB task name) and training (by dataset name).

QZhou-Embedding prompts each task with a one-line instruction (docs/recipe.md section 1: `Instruct: {instruction}\\nQuery:`).
The mteb adapter, the local evaluation tasks and the training presets all read their instructions from here.
Pure data: importing this module pulls in nothing.
"""
from __future__ import annotations

STS = "Retrieve semantically similar text"
WEB_SEARCH = "Given a web search query, retrieve relevant passages that answer the query"

# QZhou's published instructions: task_to_instructions_v2.json (MTEB eng v2) and run_cmteb_all.py (CMTEB).
QZHOU_INSTRUCTIONS: dict[str, str] = {
    # MTEB(eng, v2)
    "AmazonCounterfactualClassification": (
        "Classify a given Amazon customer review text as either counterfactual or "
        "not-counterfactual"),
    "ArXivHierarchicalClusteringP2P": (
        "Identify the main and secondary category of Arxiv papers based on the titles and "
        "abstracts"),
    "ArXivHierarchicalClusteringS2S": "Identify the main and secondary category of Arxiv papers based on the titles",
    "ArguAna": "Given a claim, find documents that refute the claim",
    "AskUbuntuDupQuestions": "Retrieve duplicate questions from AskUbuntu forum",
    "BIOSSES": STS,
    "Banking77Classification": "Given a online banking query, find the corresponding intents",
    "BiorxivClusteringP2P.v2": "Identify the main category of Biorxiv papers based on the titles and abstracts",
    "CQADupstackGamingRetrieval": (
        "Given a question, retrieve detailed question descriptions from Stackexchange that are "
        "duplicates to the given question"),
    "CQADupstackUnixRetrieval": (
        "Given a question, retrieve detailed question descriptions from Stackexchange that are "
        "duplicates to the given question"),
    "ClimateFEVERHardNegatives": (
        "Given a claim about climate change, retrieve documents that support or refute the claim"),
    "FEVERHardNegatives": "Given a claim, retrieve documents that support or refute the claim",
    "FiQA2018": "Given a financial question, retrieve user replies that best answer the question",
    "HotpotQAHardNegatives": "Given a multi-hop question, retrieve documents that can help answer the question",
    "ImdbClassification": "Classify the sentiment expressed in the given movie review text from the IMDB dataset",
    "MTOPDomainClassification": "Classify the intent domain of the given utterance in task-oriented conversation",
    "MassiveIntentClassification": "Given a user utterance as query, find the user intents",
    "MassiveScenarioClassification": "Given a user utterance as query, find the user scenarios",
    "MedrxivClusteringP2P": "Identify the main category of Medrxiv papers based on the titles and abstracts",
    "MedrxivClusteringS2S": "Identify the main category of Medrxiv papers based on the titles",
    # mteb 2.x names the MTEB(eng, v2) versions `.v2` (same data source, same instruction)
    "MedrxivClusteringP2P.v2": "Identify the main category of Medrxiv papers based on the titles and abstracts",
    "MedrxivClusteringS2S.v2": "Identify the main category of Medrxiv papers based on the titles",
    "MindSmallReranking": "Retrieve relevant news articles based on user browsing history",
    "SCIDOCS": "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper",
    "SICK-R": STS,
    "STS12": STS, "STS13": STS, "STS14": STS, "STS15": STS, "STS17": STS, "STS22.v2": STS,
    "STSBenchmark": STS,
    "SprintDuplicateQuestions": "Retrieve duplicate questions from Sprint forum",
    "StackExchangeClustering.v2": "Identify the topic or theme of StackExchange posts based on the titles",
    "StackExchangeClusteringP2P.v2": (
        "Identify the topic or theme of StackExchange posts based on the given paragraphs"),
    "SummEvalSummarization.v2": STS,
    "TRECCOVID": "Given a query on COVID-19, retrieve documents that answer the query",
    "Touche2020Retrieval.v3": "Given a question, retrieve detailed and persuasive arguments that answer the question",
    "ToxicConversationsClassification": "Classify the given comments as either toxic or not toxic",
    "TweetSentimentExtractionClassification": (
        "Classify the sentiment of a given tweet as either positive, negative, or neutral"),
    "TwentyNewsgroupsClustering.v2": "Identify the topic or theme of the given news articles",
    "TwitterSemEval2015": "Retrieve tweets that are semantically similar to the given tweet",
    "TwitterURLCorpus": "Retrieve tweets that are semantically similar to the given tweet",
    # MTEB(cmn, v1)
    "EcomRetrieval": (
        "Given a user query from an e-commerce website, retrieve description sentences of relevant "
        "products"),
    "MedicalRetrieval": "Given a medical question, retrieve user replies that best answer the question",
    "CMedQAv1-reranking": (
        "Given a Chinese community medical question, retrieve replies that best answer the "
        "question"),
    "CMedQAv2-reranking": (
        "Given a Chinese community medical question, retrieve replies that best answer the "
        "question"),
    "ATEC": STS, "BQ": STS, "LCQMC": STS, "PAWSX": STS, "STSB": STS, "AFQMC": STS, "QBQTC": STS,
    "TNews": "Classify the fine-grained category of the given news title",
    "IFlyTek": "Given an App description text, find the appropriate fine-grained category",
    "MultilingualSentiment": "Classify sentiment of the customer review into positive, neutral, or negative",
    "JDReview": "Classify the customer review for iPhone on e-commerce platform into positive or negative",
    "OnlineShopping": "Classify the customer review for online shopping into positive or negative",
    "Waimai": "Classify the customer review from a food takeaway platform into positive or negative",
    "Ocnli": "Retrieve semantically similar text.",
    "Cmnli": "Retrieve semantically similar text.",
    "CLSClusteringP2P": "Identify the main category of scholar papers based on the titles and abstracts",
    "CLSClusteringS2S": "Identify the main category of scholar papers based on the titles",
    "ThuNewsClusteringS2S": "Identify the topic or theme of the given news articles based on the titles",
    "ThuNewsClusteringP2P": "Identify the topic or theme of the given news articles based on the titles and contents",
    "T2Retrieval": "Given a Chinese search query, retrieve web passages that answer the question",
    "CmedqaRetrieval": "Given a Chinese community medical question, retrieve replies that best answer the question",
    "CovidRetrieval": "Given a question on COVID-19, retrieve news articles that answer the question",
    "DuRetrieval": "Given a Chinese search query, retrieve web passages that answer the question",
    "MMarcoReranking": "Given a Chinese search query, retrieve web passages that answer the question",
    "MMarcoRetrieval": WEB_SEARCH,
    "T2Reranking": "Given a Chinese search query, retrieve web passages that answer the question",
    "VideoRetrieval": "Given a video search query, retrieve the titles of relevant videos",
}

# Local tasks QZhou published no instruction for (ours, in the same style; SciFact's is E5-Mistral's).
LOCAL_INSTRUCTIONS: dict[str, str] = {
    "SciFact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "TRECClassification": "Classify the given question by the type of answer it asks for",
    "SST2Classification": "Classify the sentiment expressed in the given movie review text",
}

DEFAULT_INSTRUCTIONS: dict[str, str] = {**QZHOU_INSTRUCTIONS, **LOCAL_INSTRUCTIONS}

# The two local evaluation tasks MTEB lacks (eval/tasks.py).
EXTRA_INSTRUCTIONS: dict[str, str] = {
    "Banking77Clustering": "Identify the intent of the given online banking query",
    "TrecQAReranking": "Given a question, retrieve sentences that answer it",
}

# Training datasets of data/presets.py. Where the text equals an evaluation task's it is that entry; the others are
# the training prompts as they have always been (sts/nli keep QZhou's CMTEB spelling, with the final period).
TRAINING_INSTRUCTIONS: dict[str, str] = {
    "scifact": LOCAL_INSTRUCTIONS["SciFact"],
    "trecqa": EXTRA_INSTRUCTIONS["TrecQAReranking"],
    "cmrc2018": "Given a passage and a question, retrieve the answer",
    "sts": QZHOU_INSTRUCTIONS["Ocnli"],
    "nli": QZHOU_INSTRUCTIONS["Ocnli"],
    "banking77": QZHOU_INSTRUCTIONS["Banking77Classification"],
    "trec": "Given a question, classify the type of answer it expects",
    "sst2": LOCAL_INSTRUCTIONS["SST2Classification"],
    "waimai": "Classify the customer review for online food delivery services",
}
