import torch

from advrepair.attacks import MIFGSM, Transfer
from advrepair.models import SmallCNN
from advrepair.training import ClassifierRecipe, train_classifier


def test_transfer_equals_the_source_attack_and_hurts_an_independent_model(trained_cnn, shapes_train, shapes_test):
    torch.manual_seed(1)
    target = SmallCNN(num_classes=4, width=8, feature_dim=32)
    train_classifier(target, shapes_train, ClassifierRecipe(epochs=1, batch_size=64, lr=3e-3), seed=1, progress=False)
    x, y = shapes_test.tensors()
    transfer = Transfer(target, source=trained_cnn, attack="mifgsm", eps=0.2, alpha=0.02, steps=10)
    adv = transfer(x, y)
    assert torch.equal(adv, MIFGSM(trained_cnn, eps=0.2, alpha=0.02, steps=10)(x, y))
    noise = (x + 0.2 * torch.sign(torch.randn_like(x))).clamp(0, 1)
    with torch.no_grad():
        transferred = (target(adv).argmax(1) == y).float().mean()
        noisy = (target(noise).argmax(1) == y).float().mean()
    assert transferred < noisy - 0.05
    p = transfer.params()
    assert p["attack"]["name"] == "mifgsm" and p["source"] == "source"
    assert transfer.stats.per_image()["backward_per_image"] == 10
