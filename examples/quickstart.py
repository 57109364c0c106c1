"""Over-parameterize torchvision's resnet18, take a few training steps, collapse it back exactly."""

import torch
import torchvision

from overparam import collapsed_state_dict, overparameterize

torch.manual_seed(0)
model = overparameterize(torchvision.models.resnet18(num_classes=10), depth=2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 10, (16,))
for step in range(3):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step}: loss {loss.item():.4f}")

model.eval()
stock = torchvision.models.resnet18(num_classes=10).eval()
stock.load_state_dict(collapsed_state_dict(model), strict=True)
with torch.no_grad():
    diff = (stock(x) - model(x)).abs().max().item()
print(f"collapsed into a stock resnet18: max output difference {diff:.2e}")
