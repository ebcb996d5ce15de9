"""factory_boy factories for the study record."""

import factory

from studies.models import Condition, ModelEndpoint, Participant, Study, Task


class ModelEndpointFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ModelEndpoint
        django_get_or_create = ["name"]

    name = factory.Sequence(lambda n: f"endpoint-{n}")
    base_url = "http://127.0.0.1:9/v1"
    served_model = "fake"
    read_timeout = 5.0


class StudyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Study

    slug = factory.Sequence(lambda n: f"study-{n}")
    title = factory.Sequence(lambda n: f"Study {n}")
    status = Study.Status.LIVE
    consent_text = "You agree to take part."
    min_turns = 2
    rating_every = 2
    block_size = 6
    seed = 7


class ConditionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Condition

    study = factory.SubFactory(StudyFactory)
    key = factory.Sequence(lambda n: f"arm{n}")
    label = factory.LazyAttribute(lambda o: f"Arm {o.key}")
    endpoint = factory.SubFactory(ModelEndpointFactory)
    system_prompt = "none"
    generation_params = factory.LazyFunction(lambda: {"max_tokens": 16})


class TaskFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Task

    study = factory.SubFactory(StudyFactory)
    document_type = Task.DocumentType.BLOG_POST
    topic = factory.Sequence(lambda n: f"Topic {n}")
    intent_questions = factory.LazyFunction(lambda: ["Who reads it?", "What tone?"])


class ParticipantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Participant

    study = factory.SubFactory(StudyFactory)
    external_id = factory.Sequence(lambda n: f"link:p{n}")
    config_version = 1


def three_arm_study(*, endpoint: ModelEndpoint | None = None, **kwargs) -> Study:
    """A live study with the paper's three arms and two topics per document type."""
    study = StudyFactory(**kwargs)
    endpoint = endpoint or ModelEndpointFactory()
    for key, prompt in [("base", "none"), ("proactive", "proactive"), ("collabllm", "collabllm")]:
        ConditionFactory(study=study, key=key, endpoint=endpoint, system_prompt=prompt)
    for doc_type in [
        Task.DocumentType.BLOG_POST,
        Task.DocumentType.CREATIVE_WRITING,
        Task.DocumentType.PERSONAL_STATEMENT,
    ]:
        TaskFactory(study=study, document_type=doc_type)
        TaskFactory(study=study, document_type=doc_type)
    return study
