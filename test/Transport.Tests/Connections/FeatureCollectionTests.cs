using System.Threading.Channels;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http.Features;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Connections;

/// <summary>
/// The connection's feature collection as Kestrel and applications use it, on connections a real Kestrel
/// server accepted: what Kestrel set is there, features set to one object and to others are each read
/// back as set, a feature set again (to another object, to null) reads the new value, the revision moves
/// at every set, and the enumeration lists each feature once. A pooled connection object forgets all of
/// it before its next connection.
/// </summary>
public sealed class FeatureCollectionTests
{
    private interface IFirst;

    private interface ISecond;

    private interface IThird;

    private sealed class Shared : IFirst, ISecond, IThird;

    private sealed class Other : ISecond;

    /// <summary>Stands in for Kestrel's IConnectionCompleteFeature, passing its callbacks on.</summary>
    private sealed class ForwardingComplete(IConnectionCompleteFeature inner) : IConnectionCompleteFeature
    {
        public void OnCompleted(Func<object, Task> callback, object state) => inner.OnCompleted(callback, state);
    }

    [Fact]
    public async Task Features_set_on_a_connection_read_back_as_set_and_the_next_connection_starts_without_them()
    {
        var reports = Channel.CreateUnbounded<string>();
        await using var server = await ConnectionServer.StartAsync(TransportKind.Winsock, async context =>
        {
            await reports.Writer.WriteAsync(Check(context.Features));
        });

        for (var i = 0; i < 3; i++)
        {
            using var client = await RawClient.ConnectAsync(server.EndPoint);
            var report = await reports.Reader.ReadAsync(TestContext.Current.CancellationToken).AsTask().WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
            Assert.Equal("ok", report);
        }
    }

    private static string Check(IFeatureCollection features)
    {
        var problems = new List<string>();
        void Expect(bool condition, string what)
        {
            if (!condition)
            {
                problems.Add(what);
            }
        }

        // Kestrel's own, set on every connection before the application's delegate runs; and nothing of
        // the previous connection's.
        Expect(features.Get<IConnectionHeartbeatFeature>() is not null, "Kestrel's IConnectionHeartbeatFeature is missing");
        Expect(features.Get<IConnectionCompleteFeature>() is not null, "Kestrel's IConnectionCompleteFeature is missing");
        Expect(features.Get<IConnectionLifetimeNotificationFeature>() is not null, "Kestrel's IConnectionLifetimeNotificationFeature is missing");
        Expect(features.Get<IFirst>() is null && features.Get<ISecond>() is null && features.Get<IThird>() is null, "a feature of the previous connection is still set");
        Expect(features.Get<IConnectionIdFeature>() is not null, "the connection's own IConnectionIdFeature is missing");

        // One of Kestrel's four (set to one object) set to another: only it changes; then put back.
        var complete = features.Get<IConnectionCompleteFeature>()!;
        var heartbeat = features.Get<IConnectionHeartbeatFeature>();
        var forwarding = new ForwardingComplete(complete);
        features.Set<IConnectionCompleteFeature>(forwarding);
        Expect(ReferenceEquals(features.Get<IConnectionCompleteFeature>(), forwarding), "IConnectionCompleteFeature set to another object reads the old one");
        Expect(ReferenceEquals(features.Get<IConnectionHeartbeatFeature>(), heartbeat), "IConnectionHeartbeatFeature changed when IConnectionCompleteFeature was set");
        Expect(features.Count(static f => f.Key == typeof(IConnectionCompleteFeature)) == 1, "IConnectionCompleteFeature is not listed once");
        Expect(ReferenceEquals(features.First(static f => f.Key == typeof(IConnectionCompleteFeature)).Value, forwarding), "IConnectionCompleteFeature is listed with its old value");
        features.Set(complete);
        Expect(ReferenceEquals(features.Get<IConnectionCompleteFeature>(), complete), "IConnectionCompleteFeature put back does not read back");

        var shared = new Shared();
        var other = new Other();
        var revision = features.Revision;
        features.Set<IFirst>(shared);
        Expect(features.Revision != revision, "the revision did not move on a set");
        features.Set<IThird>(shared);
        features.Set<ISecond>(other);
        Expect(ReferenceEquals(features.Get<IFirst>(), shared), "IFirst does not read back as set");
        Expect(ReferenceEquals(features.Get<IThird>(), shared), "IThird does not read back as set");
        Expect(ReferenceEquals(features.Get<ISecond>(), other), "ISecond does not read back as the other object");

        // Set again: to the shared object, then to another one, then to null.
        features.Set<ISecond>(shared);
        Expect(ReferenceEquals(features.Get<ISecond>(), shared), "ISecond set again does not read back");
        revision = features.Revision;
        features.Set<IFirst>(new Shared());
        Expect(features.Revision != revision, "the revision did not move on a set again");
        Expect(!ReferenceEquals(features.Get<IFirst>(), shared) && features.Get<IFirst>() is Shared, "IFirst set to another object reads the old one");
        Expect(ReferenceEquals(features.Get<IThird>(), shared), "IThird changed when IFirst was set again");
        features.Set<IThird>(null);
        Expect(features.Get<IThird>() is null, "IThird set to null still reads a feature");
        Expect(ReferenceEquals(features.Get<ISecond>(), shared), "ISecond changed when IThird was set to null");

        // Hiding one of the connection's own features with null, as a Pipe-based transport's collection allows.
        features.Set<IConnectionItemsFeature>(null);
        Expect(features.Get<IConnectionItemsFeature>() is null, "IConnectionItemsFeature set to null still reads a feature");

        var listed = features.ToList();
        Expect(listed.Count == listed.Select(static f => f.Key).Distinct().Count(), "a feature is listed twice: " + string.Join(", ", listed.Select(static f => f.Key.Name)));
        var byType = listed.ToDictionary(static f => f.Key, static f => f.Value);
        Expect(byType.TryGetValue(typeof(IFirst), out var first) && first is Shared && !ReferenceEquals(first, shared), "IFirst is not listed with its value");
        Expect(byType.TryGetValue(typeof(ISecond), out var second) && ReferenceEquals(second, shared), "ISecond is not listed with its value");
        Expect(!byType.ContainsKey(typeof(IThird)), "IThird, set to null, is listed");
        Expect(!byType.ContainsKey(typeof(IConnectionItemsFeature)), "IConnectionItemsFeature, set to null, is listed");
        Expect(byType.ContainsKey(typeof(IConnectionHeartbeatFeature)) && byType.ContainsKey(typeof(IConnectionLifetimeNotificationFeature)), "Kestrel's features are not listed");
        Expect(byType.ContainsKey(typeof(IConnectionIdFeature)), "the connection's own IConnectionIdFeature is not listed");
        return problems.Count == 0 ? "ok" : string.Join("; ", problems);
    }
}
